"""Context-module specs: DeepLab v3's ASPP and DeepLab v2's ASPP-L (``minideeplab.scratch.aspp`` runs them,
``minideeplab.reference.aspp`` is their PyTorch twin)."""

from __future__ import annotations

from dataclasses import dataclass

from minideeplab.specs.checks import check_flag, check_int, check_rates, check_real, is_int

__all__ = ["ASPP", "ASPPL"]


@dataclass(frozen=True)
class ASPP:
    """DeepLab v3's atrous spatial pyramid pooling (torchvision's ``ASPP``).

    in_channels: channels of the features (2048 for ResNet-50/101).
    out_channels: of every branch and of the projection (256).
    atrous_rates: one 3x3 branch per rate; (6, 12, 18) at output stride 16, (12, 24, 36) at 8. Any
      number of rates (torchvision accepts any; smp and the paper use 3).
    image_pooling: the image-level branch (global average pool); False drops it (an ablation).
    separable: 3x3 branches as depthwise 3x3 + pointwise 1x1, both without bias (smp, DeepLab v3+).
    dropout: after the projection, when training: 0.5 (torchvision, smp) or 0.1 (TF DeepLab).
    """

    in_channels: int
    out_channels: int = 256
    atrous_rates: tuple[int, ...] = (6, 12, 18)
    image_pooling: bool = True
    separable: bool = False
    dropout: float = 0.5

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "in_channels", check_int("ASPP", "in_channels", self.in_channels))
        set_(self, "out_channels", check_int("ASPP", "out_channels", self.out_channels))
        set_(self, "atrous_rates", check_rates("ASPP", self.atrous_rates))
        set_(self, "image_pooling", check_flag("ASPP", "image_pooling", self.image_pooling))
        set_(self, "separable", check_flag("ASPP", "separable", self.separable))
        set_(self, "dropout", check_real("ASPP", "dropout", self.dropout, 0, 1, hi_open=True))

    @property
    def num_branches(self) -> int:
        """1x1 + one per rate + image pooling (if any): the projection sees num_branches * out_channels."""
        return 1 + len(self.atrous_rates) + int(self.image_pooling)

    @property
    def pooling_index(self) -> int | None:
        """The image pooling branch is ``convs.{pooling_index}``, after the atrous ones (torchvision);
        None without it."""
        return 1 + len(self.atrous_rates) if self.image_pooling else None


@dataclass(frozen=True)
class ASPPL:
    """DeepLab v2's ASPP-L: one branch per rate, the branches' logits summed. Rates (6, 12, 18, 24)
    (ASPP-L; the paper's ASPP-S is (2, 4, 8, 12)).

    fc_channels: None: each branch is one 3x3 conv at its rate from ``in_channels`` to ``num_classes``,
      with bias (the released DeepLab-v2 ResNet-101, Caffe's ``fc1_voc12_c{i}``: 2048 -> 21, 4 x 387,093
      parameters). An int (1024 in the paper, on VGG-16's 512-channel pool5): each branch is fc6 (3x3 at
      the rate, ``fc_channels``) -> ReLU -> drop6 -> fc7 (1x1, ``fc_channels``) -> ReLU -> drop7 -> fc8
      (1x1 to ``num_classes``), all with bias (DeepLab-v2 VGG-16).
    dropout: drop6 and drop7, when training. None (default): 0.5 with fc layers (the paper's), 0 without
      (the ResNet form has no dropout; any other value is an error there).
    """

    in_channels: int
    num_classes: int
    atrous_rates: tuple[int, ...] = (6, 12, 18, 24)
    fc_channels: int | None = 1024
    dropout: float | None = None

    def __post_init__(self):
        set_ = object.__setattr__
        for name in ("in_channels", "num_classes"):
            set_(self, name, check_int("ASPPL", name, getattr(self, name)))
        if self.fc_channels is not None:
            if not is_int(self.fc_channels) or self.fc_channels < 1:
                raise ValueError(f"ASPPL: fc_channels must be None (one 3x3 conv per rate, the ResNet-101 "
                                           f"form) or an int >= 1 (fc6-fc7-fc8, the VGG-16 form), "
                                           f"got {self.fc_channels!r}")
            set_(self, "fc_channels", int(self.fc_channels))
        set_(self, "atrous_rates", check_rates("ASPPL", self.atrous_rates))
        if self.dropout is None:
            set_(self, "dropout", 0.5 if self.fc_channels is not None else 0.0)
        else:
            set_(self, "dropout", check_real("ASPPL", "dropout", self.dropout, 0, 1, hi_open=True))
            if self.fc_channels is None and self.dropout != 0:
                raise ValueError(f"ASPPL: dropout={self.dropout!r} needs fc layers (drop6, drop7): with "
                                           f"fc_channels=None each branch is one 3x3 conv, with no dropout")

    @property
    def has_fc(self) -> bool:
        """True: fc6-fc7-fc8 per branch (VGG-16 form); False: one 3x3 conv per branch (ResNet-101 form)."""
        return self.fc_channels is not None
