import math
import pickle
import warnings

import pytest
import torch
from torch.nn import functional as F

from compress.core.archs.edsr import EDSR, EDSRConfig
from compress.core.checkpoint import load_checkpoint, rebuild, save_checkpoint
from compress.core.errors import InputError
from tests.conftest import LAYOUT_CASES, as_layout, tiny_edsr, tiny_rrdb, tiny_srcnn


def _save(tmp_path, obj, name="ckpt.pth"):
    path = tmp_path / name
    if name.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in obj.items()}, str(path))
    else:
        torch.save(obj, path)
    return path


@pytest.mark.parametrize(("layout", "make"), LAYOUT_CASES)
def test_every_layout_loads_and_reproduces_outputs(tmp_path, layout, make):
    model = make()
    path = _save(tmp_path, as_layout(model, layout))
    loaded = load_checkpoint(path, model.cfg.scale)
    assert loaded.layout == layout
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x))


def _official_edsr_forward(sd, x255, n_block, scale):
    """EDSR-PyTorch's forward written with its own parameter names, on 0..255 input."""
    conv = lambda x, k: F.conv2d(x, sd[k + ".weight"], sd[k + ".bias"], padding=sd[k + ".weight"].shape[-1] // 2)
    x = conv(x255, "sub_mean")
    x = conv(x, "head.0")
    res = x
    for i in range(n_block):
        res = res + conv(F.relu(conv(res, f"body.{i}.body.0")), f"body.{i}.body.2")
    x = x + conv(res, f"body.{n_block}")
    k = 0
    while f"tail.0.{k}.weight" in sd:
        x = F.pixel_shuffle(conv(x, f"tail.0.{k}"), 2 if scale == 4 else scale)
        k += 2
    return conv(conv(x, "tail.1"), "add_mean")


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_official_edsr_semantics_with_mean_shift_and_range(tmp_path, scale):
    model = tiny_edsr(scale)
    sd = as_layout(model, "edsr-official")
    loaded = load_checkpoint(_save(tmp_path, sd), scale)
    x = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        ref = _official_edsr_forward(sd, x * 255.0, 2, scale) / 255.0
        torch.testing.assert_close(loaded.model(x), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("wrapper", ["params_ema", "params", "state_dict"])
def test_wrappers_and_module_prefix(tmp_path, wrapper):
    sd = {"module." + k: v for k, v in as_layout(tiny_rrdb(4), "rrdb-basicsr").items()}
    loaded = load_checkpoint(_save(tmp_path, {wrapper: sd, "iter": 5}))
    assert loaded.arch == "rrdb" and loaded.scale == 4


@pytest.mark.parametrize("prefix", ["_orig_mod.", "module._orig_mod."])
def test_a_compiled_models_prefix_is_removed(tmp_path, prefix):
    """torch.compile saves ``_orig_mod.`` before every key, and DDP of a compiled model ``module._orig_mod.``."""
    sd = {prefix + k: v for k, v in as_layout(tiny_edsr(2), "edsr-basicsr").items()}
    loaded = load_checkpoint(_save(tmp_path, sd))
    assert loaded.arch == "edsr" and loaded.scale == 2 and loaded.layout == "edsr-basicsr"


def test_a_release_with_params_and_params_ema_loads_the_ema_weights(tmp_path):
    ema, raw = tiny_rrdb(4, seed=1), tiny_rrdb(4, seed=2)  # BasicSR saves both; it tests with the EMA
    path = _save(tmp_path, {"params": as_layout(raw, "rrdb-basicsr"), "params_ema": as_layout(ema, "rrdb-basicsr")})
    x = torch.rand(1, 3, 6, 7)
    with torch.no_grad():
        torch.testing.assert_close(load_checkpoint(path).model(x), ema.eval()(x))


def test_safetensors_input(tmp_path):
    loaded = load_checkpoint(_save(tmp_path, as_layout(tiny_edsr(3), "edsr-official"), "m.safetensors"))
    assert (loaded.arch, loaded.scale, loaded.layout) == ("edsr", 3, "edsr-official")


def test_canonical_round_trip_keeps_srcnn_scale(tmp_path):
    model = tiny_srcnn(4, 1)
    path = save_checkpoint(model, model.cfg, tmp_path / "s.safetensors")
    loaded = load_checkpoint(path)
    assert loaded.config == model.cfg
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x))


def test_fp16_storage_round_trip(tmp_path):
    model = tiny_edsr(2)
    loaded = load_checkpoint(save_checkpoint(model, model.cfg, tmp_path / "h.safetensors", fp16=True))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[k], v.half().float())


def test_unknown_layout_lists_keys_and_supported(tmp_path):
    path = _save(tmp_path, {"encoder.weight": torch.zeros(2, 2), "decoder.bias": torch.zeros(2)})
    with pytest.raises(InputError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg and "encoder.weight" in msg and "edsr-official" in msg and "rrdb-esrgan-old" in msg


def test_srcnn_needs_scale(tmp_path):
    path = _save(tmp_path, as_layout(tiny_srcnn(3), "srcnn"))
    with pytest.raises(InputError, match="scale"):
        load_checkpoint(path)


def test_wrong_scale_is_named(tmp_path):
    path = _save(tmp_path, as_layout(tiny_edsr(2), "edsr-basicsr"))
    with pytest.raises(InputError, match=r"x2 edsr model, but scale 4"):
        load_checkpoint(path, 4)


def test_nan_weights_are_rejected(tmp_path):
    sd = as_layout(tiny_edsr(2), "edsr-basicsr")
    sd["body.1.conv2.weight"][0, 0, 0, 0] = math.nan
    with pytest.raises(InputError, match=r"body\.1\.conv2\.weight.*NaN"):
        load_checkpoint(_save(tmp_path, sd))
    huge = {k: v.double() for k, v in as_layout(tiny_edsr(2), "edsr-basicsr").items()}
    huge["body.0.conv1.weight"][0, 0, 0, 0] = 1e300  # finite in float64, Inf in the float32 it runs in
    with pytest.raises(InputError, match=r"body\.0\.conv1\.weight' contains NaN or Inf values \(as the float32"):
        load_checkpoint(_save(tmp_path, huge))


def test_an_empty_tensor_is_named_by_its_shape(tmp_path):
    sd = as_layout(tiny_edsr(2), "edsr-basicsr")
    sd["conv_first.bias"] = torch.zeros(0)
    with pytest.raises(InputError, match=r"'conv_first\.bias' has shape \(0,\)"):
        load_checkpoint(_save(tmp_path, sd))


def test_a_shape_error_says_how_many_tensors_disagree_when_the_odd_one_set_the_widths(tmp_path):
    sd = as_layout(tiny_edsr(2), "edsr-basicsr")
    sd["body.1.conv1.weight"] = torch.zeros(16, 16, 5, 5)  # one odd tensor: it alone is named
    with pytest.raises(InputError, match=r"'body\.1\.conv1\.weight' has shape \(16, 16, 5, 5\), but the architecture "
                                         r"read from the tensor shapes needs \(16, 16, 3, 3\)$"):
        load_checkpoint(_save(tmp_path, sd))
    sd = as_layout(tiny_edsr(2), "edsr-basicsr")
    sd["conv_first.weight"] = torch.zeros(17, 3, 3, 3)  # the widths come from it: every other tensor disagrees
    with pytest.raises(InputError, match=r"'conv_first\.bias' has shape \(16,\).* \(\d+ of \d+ tensors disagree: the "
                                         r"widths are read from the first convolutions"):
        load_checkpoint(_save(tmp_path, sd))


def test_corrupt_and_non_checkpoint_files(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(InputError, match="notes.pth"):
        load_checkpoint(text)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 20)
    with pytest.raises(InputError, match="bad.safetensors"):
        load_checkpoint(bad)
    with pytest.raises(InputError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")


class _Payload:
    def __reduce__(self):
        return (print, ("executed",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": _Payload()}, f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError, match=r"evil\.pth: refused: the file holds Python objects"):
            load_checkpoint(path)


def test_bytes_that_are_no_pickle_are_not_called_code(tmp_path):
    path = tmp_path / "noise.pth"
    path.write_bytes(bytes(range(256)) * 4)  # byte 0 is no pickle opcode, nor the start of a zip
    with pytest.raises(InputError, match=r"noise\.pth: not a readable PyTorch checkpoint \(neither a zip archive nor a "
                                         r"pickle\)"):
        load_checkpoint(path)


@pytest.mark.parametrize("body", [b"Not Found", b"garbage\n", b"<html>404</html>", b"", bytes(range(256)) * 8192])
def test_text_pages_and_empty_files_are_not_called_code(tmp_path, body):
    path = tmp_path / "download.pth"  # a failed download: most ASCII letters are pickle opcodes
    path.write_bytes(body)
    with pytest.raises(InputError, match=r"download\.pth: not a readable PyTorch checkpoint"):
        load_checkpoint(path)


def test_protocol_0_pickle_with_code_is_still_refused_as_code(tmp_path):
    path = tmp_path / "evil0.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": _Payload()}, f, protocol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError, match=r"evil0\.pth: refused: the file holds Python objects"):
            load_checkpoint(path)


def test_a_folder_is_not_reported_missing(tmp_path):
    with pytest.raises(InputError, match=r": not a regular file$"):
        load_checkpoint(tmp_path)
    with pytest.raises(InputError, match=r"gone\.safetensors: checkpoint not found$"):
        load_checkpoint(tmp_path / "gone.safetensors")


def test_unknown_layout_error_is_one_line(tmp_path):
    path = _save(tmp_path, {"encoder.weight": torch.zeros(2, 2), "x\nTraceback (most recent call last):": torch.zeros(1),
                            "\x1b[2Jclear": torch.zeros(1)})  # keys that would forge a line or clear the terminal
    with pytest.raises(InputError) as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value) and "\x1b" not in str(err.value)
    assert "'x\\nTraceback" in str(err.value) and "'\\x1b[2Jclear'" in str(err.value)


def test_res_scale_and_range_survive_save_load_and_rebuild(tmp_path):
    torch.manual_seed(0)
    cfg = EDSRConfig(scale=2, num_feat=16, num_block=2, res_scale=0.1, img_range=1.0, rgb_mean=(0.5, 0.4, 0.3))
    model = EDSR(cfg).eval()  # shapes alone say res_scale 1.0 and img_range 255
    loaded = load_checkpoint(save_checkpoint(model, model.cfg, tmp_path / "r.safetensors"))
    rebuilt = rebuild(model, 2)
    assert loaded.config == cfg and rebuilt.config == cfg
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x))
        torch.testing.assert_close(rebuilt.model(x), model(x))


def test_official_edsr_trained_on_unit_range(tmp_path):
    model = tiny_edsr(2)
    sd = as_layout(model, "edsr-official")
    for key in ("sub_mean.bias", "add_mean.bias"):
        sd[key] = sd[key] / 255.0  # EDSR-PyTorch --rgb_range 1
    loaded = load_checkpoint(_save(tmp_path, sd), 2)
    assert loaded.config.img_range == 1.0
    x = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), _official_edsr_forward(sd, x, 2, 2), atol=1e-5, rtol=1e-5)


def test_official_edsr_with_other_rgb_std_is_refused(tmp_path):
    sd = as_layout(tiny_edsr(2), "edsr-official")
    sd["add_mean.weight"] = sd["add_mean.weight"] * 2.0
    with pytest.raises(InputError, match="identity"):
        load_checkpoint(_save(tmp_path, sd))


def test_declared_huge_width_is_refused_before_allocation(tmp_path):
    sd = as_layout(tiny_edsr(2), "edsr-basicsr")
    sd["conv_first.weight"] = torch.zeros(200_000, 3, 3, 3)  # 21 MB here, but 1.4 TB of trunk if built
    sd["conv_first.bias"] = torch.zeros(200_000)
    with pytest.raises(InputError, match="conv_first|body"):
        load_checkpoint(_save(tmp_path, sd))


@pytest.mark.parametrize("bad", ["expanded", "int", "float8", "sparse"])
def test_tensors_that_are_not_plain_weights(tmp_path, bad):
    sd = as_layout(tiny_edsr(2), "edsr-basicsr")
    key = "body.0.conv1.weight"
    shape = sd[key].shape
    sd[key] = {"expanded": lambda: torch.zeros(1).expand(*shape), "int": lambda: torch.zeros(shape, dtype=torch.int32),
               "float8": lambda: torch.zeros(shape).to(torch.float8_e4m3fn),
               "sparse": lambda: torch.zeros(shape).to_sparse()}[bad]()
    with pytest.raises(InputError, match=key.replace(".", r"\.")):
        load_checkpoint(_save(tmp_path, sd))


def test_truncated_legacy_format_file(tmp_path):
    full = tmp_path / "full.pth"
    torch.save(as_layout(tiny_rrdb(4), "rrdb-esrgan-old"), full, _use_new_zipfile_serialization=False)
    for size in (28, 300, full.stat().st_size // 2):
        cut = tmp_path / f"cut{size}.pth"
        cut.write_bytes(full.read_bytes()[:size])
        with pytest.raises(InputError, match=cut.name):
            load_checkpoint(cut)


def test_metadata_scale_is_validated_and_checked(tmp_path):
    from safetensors.torch import save_file

    model = tiny_srcnn(3, 1)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"scale": "x4"})
    with pytest.raises(InputError, match="metadata scale"):
        load_checkpoint(bad)
    good = save_checkpoint(model, model.cfg, tmp_path / "s.safetensors")
    with pytest.raises(InputError, match="records scale 3"):
        load_checkpoint(good, 2)


def test_metadata_res_scale_over_one_is_an_input_error(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_edsr(2).state_dict().items()}, str(path),
              metadata={"res_scale": "2.0"})
    with pytest.raises(InputError, match=r"m\.safetensors: metadata outside the edsr model's bounds \(ValueError: "
                                         r"EDSRConfig\.res_scale must be in \(0, 1\], got 2\.0\)"):
        load_checkpoint(path)


def test_partial_srcnn_and_colliding_keys_are_input_errors(tmp_path):
    sd = as_layout(tiny_srcnn(3), "srcnn")
    del sd["conv1.weight"]
    with pytest.raises(InputError):
        load_checkpoint(_save(tmp_path, sd, "partial.pth"), 3)
    old = as_layout(tiny_rrdb(4), "rrdb-esrgan-old")
    old["conv_first.weight"] = old["model.0.weight"].clone()  # renamed model.0 lands on the same name
    with pytest.raises(InputError, match="both map to"):
        load_checkpoint(_save(tmp_path, old, "dup.pth"))


def test_safetensors_by_content_not_suffix(tmp_path):
    sd = as_layout(tiny_edsr(2), "edsr-basicsr")
    upper = _save(tmp_path, sd, "m.safetensors").rename(tmp_path / "M.SAFETENSORS")
    assert load_checkpoint(upper).arch == "edsr"
    renamed = _save(tmp_path, sd, "n.safetensors").rename(tmp_path / "n.pth")
    with pytest.raises(InputError, match="safetensors file with another suffix"):
        load_checkpoint(renamed)


def test_weights_sharing_one_storage_are_refused(tmp_path):
    sd = as_layout(tiny_edsr(2), "edsr-basicsr")
    for i in range(2):  # a small file would fill every block from one tensor
        sd[f"body.{i}.conv1.weight"] = sd["body.0.conv2.weight"]
    with pytest.raises(InputError, match="shares its data"):
        load_checkpoint(_save(tmp_path, sd))


def test_official_mean_shift_of_wrong_length_is_an_input_error(tmp_path):
    sd = as_layout(tiny_edsr(2), "edsr-official")
    sd["sub_mean.bias"] = torch.zeros(4)
    with pytest.raises(InputError, match="3"):
        load_checkpoint(_save(tmp_path, sd))


def test_weights_saved_as_parameters_load_without_autograd_warnings(tmp_path):
    import warnings

    sd = {k: torch.nn.Parameter(v.clone()) for k, v in as_layout(tiny_edsr(2), "edsr-basicsr").items()}
    sd["mean"] = torch.nn.Parameter(torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1))  # read as numbers
    path = tmp_path / "params.pth"
    torch.save(sd, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the mean read from a requires_grad tensor used to warn on stderr
        loaded = load_checkpoint(path)
    assert loaded.arch == "edsr" and not any(p.grad_fn for p in loaded.model.state_dict().values())


def test_a_deflated_zip_checkpoint_that_expands_far_past_its_size_is_refused(tmp_path):
    import zipfile

    bomb = tmp_path / "bomb.pth"  # 32 MiB of zeros in a file of a few dozen KiB: torch.save never compresses
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\0" * (32 << 20))
    with pytest.raises(InputError, match=r"bomb.pth: refused: its zip entries expand to 32 MiB"):
        load_checkpoint(bomb)
    plain = tmp_path / "plain.pth"  # torch.save's own zip still loads
    torch.save(as_layout(tiny_edsr(2), "edsr-official"), plain)
    assert load_checkpoint(plain).scale == 2


def test_a_scale_recorded_in_the_metadata_is_named_as_recorded_not_requested(tmp_path):
    from safetensors.torch import save_file

    model = tiny_edsr(2)
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata={"scale": "4"})
    with pytest.raises(InputError, match="x2 edsr model, but scale 4 was recorded"):
        load_checkpoint(path)


def test_a_zip_checkpoint_zipfile_cannot_list_is_left_to_torch_load(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save(as_layout(tiny_edsr(2), "edsr-official"), path)
    data = bytearray(path.read_bytes())
    central = data.find(b"PK\x01\x02")
    data[central + 6:central + 8] = (88).to_bytes(2, "little")  # "version needed": zipfile raises NotImplementedError
    path.write_bytes(bytes(data))
    assert load_checkpoint(path).scale == 2  # torch's reader takes it; the bomb check must not crash on it


@pytest.mark.parametrize("make", [lambda: tiny_edsr(2), lambda: tiny_rrdb(4)])
def test_a_width_no_tensor_can_hold_is_an_input_error_not_an_internal_one(tmp_path, make):
    """A zero-element conv_first of 2^31 outputs declares a trunk whose next weight overflows int64 on the
    meta device: one InputError, as for every other impossible shape."""
    sd = {k: v.clone() for k, v in make().state_dict().items() if k != "mean"}
    sd["conv_first.weight"] = torch.empty(2**31, 3, 0, 3)
    path = tmp_path / "wide.pth"
    torch.save(sd, path)
    with pytest.raises(InputError, match=rf"^{path}: layout \S+: the \w+ model its shapes describe cannot be built \("):
        load_checkpoint(path)


@pytest.mark.parametrize(("key", "problem"), [
    ("sub_mean.weight", r"sub_mean.weight is not the identity: an rgb_std other than 1, or a mean shift trained"),
    ("sub_mean.bias", r"sub_mean.bias is not the negative of add_mean.bias \(a mean shift trained along with"),
])
def test_an_edsr_whose_mean_shift_was_trained_is_refused_with_that_cause(tmp_path, key, problem):
    """EDSR-PyTorch's MeanShift set ``self.requires_grad = False`` (a no-op) until November 2018, so files
    trained with it have moved mean shifts; the message says so rather than only blaming rgb_std."""
    sd = as_layout(tiny_edsr(2), "edsr-official")
    sd[key] = sd[key] * 1.02
    path = tmp_path / "edsr_2018.pt"
    torch.save(sd, path)
    with pytest.raises(InputError, match=problem):
        load_checkpoint(path)
