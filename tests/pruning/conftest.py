import torch

from compress.core.checkpoint import load_checkpoint, rebuild, save_checkpoint
from export.onnx_export import export_onnx
from export.runtimes import ort_upscaler


def assert_pruned_model_round_trips(model: torch.nn.Module, tmp_path, x: torch.Tensor):  # noqa: ANN001
    """A pruned model rebuilds from its tensor shapes, reloads with the same outputs and exports to
    ONNX with the same outputs; returns the rebuilt config."""
    rebuilt = rebuild(model, model.scale)
    path = save_checkpoint(rebuilt.model, rebuilt.config, tmp_path / "p.safetensors")
    again = load_checkpoint(path)
    assert again.config == rebuilt.config
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(again.model(x), ref)
    onnx_out = ort_upscaler(export_onnx(again.model, tmp_path / "p.onnx"))(x.numpy())
    assert abs(onnx_out - ref.numpy()).max() < 1e-4
    return rebuilt.config
