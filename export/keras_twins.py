"""Keras (tf-keras, Keras 2) twins of the canonical PyTorch models, with weights transferred.

Layer names mirror the canonical PyTorch names (``body.3.conv1`` -> ``body_3_conv1``). Weights go
OIHW -> HWIO. PixelShuffle becomes ``depth_to_space``: PyTorch orders the upsampler's channels as
``c * r^2 + (i * r + j)`` and TensorFlow as ``(i * r + j) * C + c``, so the output channels of the
convolution before it are permuted (and, for RRDB's pixel-unshuffle, the input channels of the
convolution after ``space_to_depth``). Only standard layers plus two small registered layers
(:class:`DepthToSpace`, :class:`SpaceToDepth`) are used, so tfmot can wrap the convolutions.
Requires ``TF_USE_LEGACY_KERAS=1`` (set by :func:`keras`).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from compress.core.archs import EDSRConfig, RRDBConfig, SRCNNConfig, of_config, structure_of
from compress.core.archs.edsr import upsample_stages
from compress.core.resize import phase_kernels


def keras():  # noqa: ANN201
    """tf_keras, with TensorFlow told to use Keras 2."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tf_keras

    return tf_keras


def _layers():  # noqa: ANN202
    tfk = keras()
    import tensorflow as tf

    @tfk.utils.register_keras_serializable(package="srcompress")
    class DepthToSpace(tfk.layers.Layer):
        """TensorFlow's depth_to_space (PixelShuffle with TF channel order)."""

        def __init__(self, block_size: int, **kwargs) -> None:
            super().__init__(**kwargs)
            self.block_size = block_size

        def call(self, x):  # noqa: ANN001, ANN201
            return tf.nn.depth_to_space(x, self.block_size)

        def get_config(self) -> dict:
            return {**super().get_config(), "block_size": self.block_size}

    @tfk.utils.register_keras_serializable(package="srcompress")
    class SpaceToDepth(DepthToSpace):
        """TensorFlow's space_to_depth (pixel-unshuffle with TF channel order)."""

        def call(self, x):  # noqa: ANN001, ANN201
            return tf.nn.space_to_depth(x, self.block_size)

    @tfk.utils.register_keras_serializable(package="srcompress")
    class BicubicUp(DepthToSpace):
        """PIL / MATLAB bicubic enlargement by ``block_size`` (:func:`compress.core.resize.bicubic_up`):
        a fixed 5x5 convolution per output phase, taps outside the image dropped and renormalised."""

        def call(self, x):  # noqa: ANN001, ANN201
            s = self.block_size
            k = phase_kernels(s).transpose(1, 2, 0)[:, :, None, :]  # (5, 5, 1, s*s)
            kernel = tf.constant(k, dtype=tf.float32)
            pad = [[0, 0], [2, 2], [2, 2], [0, 0]]
            chans = [tf.nn.conv2d(tf.pad(x[..., i:i + 1], pad), kernel, 1, "VALID") for i in range(3)]
            den = tf.nn.conv2d(tf.pad(tf.ones_like(x[..., :1]), pad), kernel, 1, "VALID")
            # TF depth_to_space reads channel (p*s + q)*C + c for output phase (p, q) and channel c
            num = tf.stack(chans, axis=-1)  # (N, H, W, s*s, 3)
            out = num / den[..., None]
            shape = tf.shape(x)
            return tf.nn.depth_to_space(tf.reshape(out, [shape[0], shape[1], shape[2], s * s * 3]), s)

    return DepthToSpace, SpaceToDepth, BicubicUp


def tf_name(torch_name: str) -> str:
    return torch_name.replace(".", "_")


def shuffle_perm(channels_out: int, r: int) -> np.ndarray:
    """Index map: TF channel t of a depth_to_space input takes PyTorch channel perm[t]."""
    c = channels_out // (r * r)
    return np.array([ci * r * r + k for k in range(r * r) for ci in range(c)])


def unshuffle_perm(channels_in: int, r: int) -> np.ndarray:
    """TF channel t after space_to_depth holds what PyTorch's pixel_unshuffle puts at perm[t]."""
    return shuffle_perm(channels_in * r * r, r)


def _edsr_twin(cfg: EDSRConfig, inp, L, conv, layers):  # noqa: ANN001, ANN202
    DepthToSpace = layers[0]
    mean = [float(m) for m in cfg.rgb_mean]  # plain floats: the layer config must serialise
    # Scale and shift are separate layers so that QAT puts a quantizer on each intermediate tensor
    # (one Rescaling becomes MUL + ADD in TFLite, and the MUL output would have no range).
    x = L.Rescaling(1.0, offset=[-m for m in mean], name="sub_mean")(inp)
    x = L.Rescaling(cfg.img_range, name="range_in")(x)
    x = head = conv(cfg.num_feat, "conv_first")(x)
    for i, mid in enumerate(cfg.mids):
        y = L.ReLU(name=f"body_{i}_relu")(conv(mid, f"body.{i}.conv1")(x))
        y = conv(cfg.num_feat, f"body.{i}.conv2")(y)
        if cfg.res_scale != 1.0:
            y = L.Rescaling(cfg.res_scale, name=f"body_{i}_scale")(y)
        x = L.Add(name=f"body_{i}_add")([x, y])
    x = L.Add(name="trunk_add")([head, conv(cfg.num_feat, "conv_after_body")(x)])
    for k, r in enumerate(upsample_stages(cfg.scale)):
        x = DepthToSpace(r, name=f"upsample_{2 * k + 1}")(conv(cfg.up_width * r * r, f"upsample.{2 * k}")(x))
    x = conv(3, "conv_last")(x)
    x = L.Rescaling(1.0 / cfg.img_range, name="range_out")(x)
    return L.Rescaling(1.0, offset=mean, name="add_mean")(x)


def _rrdb_twin(cfg: RRDBConfig, inp, L, conv, layers):  # noqa: ANN001, ANN202
    SpaceToDepth = layers[1]
    act = lambda name: L.LeakyReLU(0.2, name=name)  # noqa: E731
    x = SpaceToDepth(cfg.unshuffle, name="unshuffle")(inp) if cfg.unshuffle > 1 else inp
    x = feat = conv(cfg.num_feat, "conv_first")(x)
    for i in range(cfg.num_block):
        block_in = x
        for r_i, grow in enumerate(cfg.block_grow(i), start=1):
            p = f"body.{i}.rdb{r_i}"
            feats = [x]
            for j, g in enumerate(grow, start=1):
                cat = feats[0] if len(feats) == 1 else L.Concatenate(name=tf_name(f"{p}.cat{j}"))(feats)
                feats.append(act(tf_name(f"{p}.act{j}"))(conv(g, f"{p}.conv{j}")(cat)))
            y = conv(cfg.num_feat, f"{p}.conv5")(L.Concatenate(name=tf_name(f"{p}.cat5"))(feats))
            x = L.Add(name=tf_name(f"{p}.add"))([x, L.Rescaling(0.2, name=tf_name(f"{p}.scale"))(y)])
        x = L.Add(name=f"body_{i}_add")([block_in, L.Rescaling(0.2, name=f"body_{i}_scale")(x)])
    x = L.Add(name="trunk_add")([feat, conv(cfg.num_feat, "conv_body")(x)])
    u1, u2, uh = cfg.up_widths
    x = act("act_up1")(conv(u1, "conv_up1")(L.UpSampling2D(2, interpolation="nearest", name="up1")(x)))
    x = act("act_up2")(conv(u2, "conv_up2")(L.UpSampling2D(2, interpolation="nearest", name="up2")(x)))
    return conv(3, "conv_last")(act("act_hr")(conv(uh, "conv_hr")(x)))


def _srcnn_twin(cfg: SRCNNConfig, inp, L, conv, layers):  # noqa: ANN001, ANN202
    BicubicUp = layers[2]
    # MATLAB / PIL bicubic enlargement (as in PyTorch), then SRCNN on RGB or on BT.601 luma.
    x = BicubicUp(cfg.scale, name="bicubic")(inp)
    if cfg.channels == 1:
        y = L.Conv2D(1, 1, trainable=False, name="rgb_to_y")(x)
        cbcr = L.Conv2D(2, 1, trainable=False, name="rgb_to_cbcr")(x)
    else:
        y = x
    y = L.ReLU(name="relu1")(conv(cfg.num_feat, "conv1", 9)(y))
    y = L.ReLU(name="relu2")(conv(cfg.num_feat2, "conv2", 5)(y))
    y = conv(cfg.channels, "conv3", 5)(y)
    return y if cfg.channels == 3 else L.Conv2D(3, 1, trainable=False, name="ycbcr_to_rgb")(
        L.Concatenate(name="ycbcr")([y, cbcr]))


#: One Keras twin builder per architecture (by :attr:`Architecture.name`).
TWINS = {"edsr": _edsr_twin, "rrdb": _rrdb_twin, "srcnn": _srcnn_twin}


def build_keras(cfg: EDSRConfig | RRDBConfig | SRCNNConfig):  # noqa: ANN201
    """A Keras functional model with the canonical model's structure (NHWC RGB in [0, 1])."""
    tfk = keras()
    name = of_config(cfg).name
    if name not in TWINS:
        raise ValueError(f"no Keras twin for architecture {name!r}; twins: {sorted(TWINS)}")
    conv = lambda n, lname, k=3: tfk.layers.Conv2D(n, k, padding="same", name=tf_name(lname))  # noqa: E731
    inp = tfk.Input((None, None, 3), name="lr")
    out = TWINS[name](cfg, inp, tfk.layers, conv, _layers())
    return tfk.Model(inp, out, name=type(cfg).__name__.removesuffix("Config").lower())


def _srcnn_fixed_weights(kmodel, cfg: SRCNNConfig) -> None:  # noqa: ANN001
    from compress.core.color import BT601_INVERSE, BT601_MATRIX, BT601_OFFSET

    if cfg.channels == 1:
        kmodel.get_layer("rgb_to_y").set_weights([BT601_MATRIX[:1].T.reshape(1, 1, 3, 1).astype(np.float32), BT601_OFFSET[:1].astype(np.float32)])
        kmodel.get_layer("rgb_to_cbcr").set_weights([BT601_MATRIX[1:].T.reshape(1, 1, 3, 2).astype(np.float32), BT601_OFFSET[1:].astype(np.float32)])
        kmodel.get_layer("ycbcr_to_rgb").set_weights([BT601_INVERSE.T.reshape(1, 1, 3, 3).astype(np.float32),
                                                      (-BT601_INVERSE @ BT601_OFFSET).astype(np.float32)])


def transfer_weights(kmodel, torch_model: torch.nn.Module) -> None:  # noqa: ANN001
    """Copy every convolution of ``torch_model`` into the twin (HWIO, PixelShuffle order handled)."""
    cfg = torch_model.cfg
    if isinstance(cfg, SRCNNConfig):  # the twin's fixed bicubic and colour layers
        _srcnn_fixed_weights(kmodel, cfg)
    sd = {k: v.detach().cpu().numpy() for k, v in torch_model.state_dict().items()}
    factor = {id(conv): r for conv, r in structure_of(torch_model).upsample_convs}
    shuffle_r = {name: factor[id(m)] for name, m in torch_model.named_modules() if id(m) in factor}
    for name, module in torch_model.named_modules():
        if not isinstance(module, torch.nn.Conv2d):
            continue
        w, b = sd[f"{name}.weight"], sd[f"{name}.bias"]
        if name in shuffle_r:
            perm = shuffle_perm(w.shape[0], shuffle_r[name])
            w, b = w[perm], b[perm]
        if name == "conv_first" and isinstance(cfg, RRDBConfig) and cfg.unshuffle > 1:
            w = w[:, unshuffle_perm(3, cfg.unshuffle)]
        kmodel.get_layer(tf_name(name)).set_weights([w.transpose(2, 3, 1, 0), b])


def to_keras(torch_model: torch.nn.Module):  # noqa: ANN201
    kmodel = build_keras(torch_model.cfg)
    transfer_weights(kmodel, torch_model)
    return kmodel
