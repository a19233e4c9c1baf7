"""Atomic writes and stage folders: errors name the file asked for; a rerun keeps nothing of the last."""

import errno
import os

import pytest

from compress.core.errors import MAX_MESSAGE_CHARS, InputError, WriteError, error_line
from compress.core.files import (
    atomic_path, fresh_folder, fresh_stage_folder, is_number, read_json, read_regular, removed_on_failure, require_regular,
    sidecar_path, write_sidecar, write_text_atomic,
)


def test_write_errors_name_the_file_asked_for_never_the_temporary_one(tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(WriteError, match=r"afile/x\.json: cannot write \(File exists\)"):
        write_text_atomic(tmp_path / "afile" / "x.json", "{}")
    (tmp_path / "taken.json").mkdir()
    with pytest.raises(WriteError, match=r"taken\.json: cannot write \(Is a directory\)") as err:
        write_text_atomic(tmp_path / "taken.json", "{}")
    assert err.value.reason == "Is a directory"
    with pytest.raises(WriteError, match=r"full\.bin: cannot write \(No space left on device\)"):
        with atomic_path(tmp_path / "full.bin") as tmp:  # the disk fills while the temporary file is written
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "taken.json"]  # no temporary file left


def test_an_error_of_something_else_passes_through(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "out.bin"):
            open(tmp_path / "missing-input.bin", "rb")  # noqa: SIM115


def test_fresh_folder_empties_a_stage_folder_and_replaces_a_file(tmp_path):
    stage = tmp_path / "20-quantize" / "model"
    stage.mkdir(parents=True)
    (stage / "model_int8_entropy.onnx").write_bytes(b"an earlier recipe's")
    assert fresh_folder(stage) == stage and list(stage.iterdir()) == []
    (tmp_path / "30-export").write_text("")
    assert fresh_folder(tmp_path / "30-export").is_dir()


def test_an_artifact_whose_sidecar_fails_is_removed_with_every_sidecar_written(tmp_path):
    ckpt, onnx = tmp_path / "m.safetensors", tmp_path / "m.onnx"
    ckpt.write_bytes(b"weights")
    with pytest.raises(KeyboardInterrupt):
        with removed_on_failure(ckpt, onnx):
            write_sidecar(ckpt, {"stage": "prune"})
            onnx.write_bytes(b"graph")
            raise KeyboardInterrupt  # interrupted before the second sidecar
    assert list(tmp_path.iterdir()) == []
    with removed_on_failure(ckpt):  # success keeps both
        ckpt.write_bytes(b"weights")
        write_sidecar(ckpt, {"stage": "prune"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [ckpt.name, sidecar_path(ckpt).name]


def test_json_past_a_floats_range_or_nested_too_deeply_is_refused_by_name(tmp_path):
    path = tmp_path / "stage_seconds.json"
    path.write_text('{"model": 1e400}')  # valid JSON syntax; no float holds it, and it could not be written back
    with pytest.raises(InputError, match=r"stage_seconds\.json: not valid JSON \(1e400 is beyond a float's range\)"):
        read_json(path)
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InputError, match=r"stage_seconds\.json: not usable JSON \(nested too deeply\)"):
        read_json(path)
    (tmp_path / "ok.json").write_text('{"a": 1.5e3}')
    assert read_json(tmp_path / "ok.json") == {"a": 1500.0}
    assert [is_number(v) for v in (1, 2.5, 10**300, 10**400, float("inf"), float("nan"), True, "1")] == [
        True, True, True, False, False, False, False, False]


def test_an_error_is_one_printable_line_of_bounded_length():
    assert error_line("a.png\nTraceback (most recent call last):\x1b[31m") == (
        "a.png\\nTraceback (most recent call last):\\x1b[31m")
    long = error_line("x" * 5000)
    assert long.startswith("x" * MAX_MESSAGE_CHARS) and long.endswith("... (5000 characters)")
    assert error_line("café: ok") == "café: ok"  # only control characters are escaped


def test_a_fresh_stage_folder_is_removed_if_its_stage_fails(tmp_path):
    stage = tmp_path / "30-export"
    with fresh_stage_folder(stage) as folder:
        (folder / "model_fp32.onnx").write_bytes(b"graph")
    assert (stage / "model_fp32.onnx").is_file()  # kept: the block succeeded
    with pytest.raises(RuntimeError, match="parity"):
        with fresh_stage_folder(stage) as folder:
            assert list(folder.iterdir()) == []  # emptied first, as fresh_folder
            (folder / "model_fp32.onnx").write_bytes(b"graph")
            raise RuntimeError("parity")
    assert not stage.exists() and tmp_path.is_dir()


def test_signals_held_delivers_a_signal_only_after_the_cleanup():
    import os
    import signal

    from compress.core.files import signals_held

    import threading

    seen = []
    earlier = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    idle = threading.Event()
    other = threading.Thread(target=idle.wait)  # as torch's or ONNX Runtime's threads: the kernel may pick it
    other.start()
    try:
        with signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # bytecodes at which an unheld signal's handler would run
                pass
            assert seen == []
        assert seen == [signal.SIGTERM]
    finally:
        idle.set()
        other.join()
        signal.signal(signal.SIGTERM, earlier)


def test_signals_held_delivers_every_signal_and_restores_every_handler_even_when_one_raises():
    import os
    import signal

    from compress.core.files import signals_held

    seen = []

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    earlier = {signal.SIGINT: signal.signal(signal.SIGINT, interrupt),
               signal.SIGTERM: signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))}
    try:
        with pytest.raises(KeyboardInterrupt):
            with signals_held():
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [signal.SIGTERM]  # not lost behind the KeyboardInterrupt of the first
        assert signal.getsignal(signal.SIGINT) is interrupt  # no recorder left behind
        assert signal.getsignal(signal.SIGTERM) is not interrupt and signal.getsignal(signal.SIGTERM) is not None
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [signal.SIGTERM, signal.SIGTERM]
    finally:
        for s, handler in earlier.items():
            signal.signal(s, handler)


def test_json_that_is_no_regular_file_or_too_large_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """A report named like ``report.json`` that is a FIFO would block ``upscale --run`` for ever, and a
    link to ``/dev/zero`` would fill the memory (a hostile-input probe of session 35)."""
    import compress.core.files as files

    os.mkfifo(tmp_path / "report.json")
    with pytest.raises(InputError, match=r"report\.json: the file is not a regular file"):
        read_json(tmp_path / "report.json")
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    with pytest.raises(InputError, match="not a regular file"):
        read_json(tmp_path / "zero.json")
    monkeypatch.setattr(files, "MAX_JSON_BYTES", 8)
    (tmp_path / "big.json").write_text('{"a": 12345}')
    with pytest.raises(InputError, match=r"big\.json: file is over 0 KiB"):
        read_json(tmp_path / "big.json")
    with pytest.raises(InputError, match=r"none\.json: file not found"):
        read_json(tmp_path / "none.json")
    assert read_regular(tmp_path / "big.json", 100, "file") == b'{"a": 12345}'


def test_require_regular_tells_a_missing_path_from_a_folder_or_device(tmp_path):
    """One check for every file the user names (checkpoint, artifact, image): a folder or a device is
    "not a regular file", nothing there is the caller's ``missing`` wording, a link to a file passes."""
    (tmp_path / "w.pth").write_bytes(b"x")
    (tmp_path / "link.pth").symlink_to(tmp_path / "w.pth")
    assert require_regular(tmp_path / "link.pth") == tmp_path / "link.pth"
    assert require_regular(str(tmp_path / "w.pth")) == tmp_path / "w.pth"
    for odd in (tmp_path, "/dev/null"):
        with pytest.raises(InputError, match=r": not a regular file$"):
            require_regular(odd, missing="checkpoint not found")
    with pytest.raises(InputError, match=r"none\.pth: checkpoint not found$"):
        require_regular(tmp_path / "none.pth", missing="checkpoint not found")
    with pytest.raises(InputError, match=r"none\.onnx: file not found$"):
        require_regular(tmp_path / "none.onnx")


def test_a_sidecar_names_the_cpu_its_figures_come_from_unless_the_stage_says_otherwise(tmp_path):
    import json

    from compress.core.cpu import host_cpu

    (tmp_path / "a.bin").write_bytes(b"x")
    assert json.loads(write_sidecar(tmp_path / "a.bin", {"stage": "s"}).read_text())["cpu"] == host_cpu().describe()
    side = write_sidecar(tmp_path / "a.bin", {"stage": "s", "cpu": "NVIDIA H200"})
    assert json.loads(side.read_text())["cpu"] == "NVIDIA H200"
