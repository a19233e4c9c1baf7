"""Evaluation sets: the embedded split plus the user's folders, each under a name of its own."""

import pytest

from compress.core.errors import InputError
from compress.core.evaluate import eval_sets, set_name
from tests.conftest import write_image


def test_two_folders_that_would_share_a_name_are_refused(tmp_path):
    for folder in (tmp_path / "a" / "Set5", tmp_path / "b" / "Set5" / "HR", tmp_path / "embedded"):
        folder.mkdir(parents=True)
        write_image(folder / "x.png", (24, 24))
    assert set_name(tmp_path / "b" / "Set5" / "HR") == "Set5"
    assert set(eval_sets(2, [str(tmp_path / "a" / "Set5")])) == {"embedded", "Set5"}
    with pytest.raises(InputError, match=r"b/Set5/HR: its results would go by the name 'Set5', as .*a/Set5's do"):
        eval_sets(2, [str(tmp_path / "a" / "Set5"), str(tmp_path / "b" / "Set5" / "HR")])
    with pytest.raises(InputError, match=r"embedded: its results would go by the name 'embedded', as the embedded"):
        eval_sets(2, [str(tmp_path / "embedded")])
