"""The PyTorch towers, built from a resolved schema: one embedding or projection per field (by kind),
optional SENet field gating, an optional MLP, an L2-normalised output of a dim shared by both towers.

Two options from the literature, both inside the exported graph so the ONNX contract (the schema's
inputs -> `[B, dim]`) does not change:
- `pooling="attention"`: a sequence field is pooled by attention over its items (a learned query,
  plus a learned embedding of each item's distance from the most recent one) instead of a mean;
- `augment=True` (Dual Augmented Two-Tower, Yu et al. 2021): a learned per-id vector of width
  `dim`, looked up from the tower's id field and concatenated into the tower input. Training pulls
  it towards the other tower's output for the positives (the mimic loss, in train.py), so each
  tower carries what the other side found in its interactions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.errors import SchemaError
from models.features import FeatureSchema, FieldSpec, Side, TowerSchema


class FieldEmbedding(nn.Module):
    """One field -> [B, E].

    Id-like kinds (categorical, hashed, bucket, sequence, hashed_words) look up an embedding whose
    index 0 is zero (padding_idx), so OOV/missing adds nothing; multi_hot is a bias-free linear
    map of the 0/1 columns; numeric a linear map of the normalised scalar; vector a linear
    projection of the given embedding.
    """

    def __init__(self, spec: FieldSpec, cardinality: int, dim: int, pooling: str = "mean") -> None:
        super().__init__()
        self.kind = spec.kind
        self.attention = pooling == "attention" and spec.kind == "sequence"
        if self.attention:
            self.query = nn.Parameter(torch.randn(dim) * 0.05)
            # position 0 = the most recent item; a history is at most max_len long
            self.positions = nn.Embedding(max(1, spec.max_len), dim)
            nn.init.normal_(self.positions.weight, std=0.05)
        if spec.kind == "multi_hot":
            self.proj: nn.Module = nn.Linear(cardinality, dim, bias=False)
        elif spec.kind in ("numeric", "vector"):
            self.proj = nn.Linear(cardinality, dim)
        else:
            self.proj = nn.Embedding(cardinality, dim, padding_idx=0)
        nn.init.normal_(self.proj.weight, std=0.05)
        if isinstance(self.proj, nn.Embedding):
            with torch.no_grad():
                self.proj.weight[0].zero_()

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "numeric":
            scalar: Tensor = self.proj(x.unsqueeze(-1))
            return scalar
        if self.kind == "vector":
            projected: Tensor = self.proj(x)
            return projected
        if self.kind == "multi_hot":
            # mean over the active columns so a row with 5 tags is not 5x louder than one with 1
            count = x.sum(dim=1, keepdim=True).clamp(min=1.0)
            out: Tensor = self.proj(x) / count
            return out
        emb: Tensor = self.proj(x)
        if self.attention:
            return self._attend(x, emb)
        if self.kind in ("sequence", "hashed_words"):
            # masked mean; EmbeddingBag is avoided because its ONNX export is poor
            mask = (x != 0).unsqueeze(-1).to(emb.dtype)
            count = mask.sum(dim=1).clamp(min=1.0)
            pooled: Tensor = (emb * mask).sum(dim=1) / count
            return pooled
        return emb

    def _attend(self, x: Tensor, emb: Tensor) -> Tensor:
        """Attention pooling over a right-padded sequence, oldest first. Keys carry the distance from
        the most recent item, so recency can be weighted; values are the item embeddings."""
        mask = x != 0
        count = mask.sum(dim=1, keepdim=True)
        col = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
        dist = (count - 1 - col).clamp(min=0, max=self.positions.num_embeddings - 1)
        keys = emb + self.positions(dist)
        scores = (keys * self.query).sum(dim=-1) / math.sqrt(emb.shape[-1])
        # -1e9, not -inf: an empty history gives uniform weights over zero vectors, not NaN
        weights = torch.softmax(scores.masked_fill(~mask, -1e9), dim=1) * mask.to(emb.dtype)
        pooled: Tensor = (weights.unsqueeze(-1) * emb).sum(dim=1)
        return pooled


class SENet(nn.Module):
    """Squeeze-and-excitation over fields: learns how much each field contributes per example."""

    def __init__(self, num_fields: int, reduction: int = 2) -> None:
        super().__init__()
        hidden = max(2, num_fields // reduction)
        self.mlp = nn.Sequential(nn.Linear(num_fields, hidden), nn.ReLU(), nn.Linear(hidden, num_fields))

    def forward(self, fields: Tensor) -> Tensor:  # [B, F, E]
        z = fields.mean(dim=2)  # squeeze: one scalar per field
        # 2*sigmoid starts at 1 (identity) for zero logits and may amplify as well as damp
        w = 2.0 * torch.sigmoid(self.mlp(z))
        return fields * w.unsqueeze(-1)


class Tower(nn.Module):
    """One side of the two-tower model. `forward(**inputs)` takes the encoder's arrays as tensors."""

    def __init__(
        self,
        tower: TowerSchema,
        vocabularies: Mapping[str, Sequence[str]],
        dim: int = 64,
        field_dim: int = 32,
        hidden: Sequence[int] = (256,),
        senet: bool = True,
        dropout: float = 0.0,
        pooling: str = "mean",
        augment: bool = False,
    ) -> None:
        super().__init__()
        self.side = tower.side
        self.field_names = [f.name for f in tower.fields]
        self.embeddings = nn.ModuleDict(
            {f.name: FieldEmbedding(f, f.cardinality(vocabularies), field_dim, pooling) for f in tower.fields}
        )
        self.senet = SENet(len(tower.fields)) if senet else None
        width = field_dim * len(tower.fields)
        self.aug_field: str | None = None
        if augment:
            id_spec = id_field(tower)
            self.aug_field = id_spec.name
            self.aug = nn.Embedding(id_spec.cardinality(vocabularies), dim, padding_idx=0)
            nn.init.normal_(self.aug.weight, std=0.05)
            with torch.no_grad():
                self.aug.weight[0].zero_()
            width += dim
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, dim))
        self.mlp = nn.Sequential(*layers)
        self.dim = dim

    def forward(self, **inputs: Tensor) -> Tensor:
        return self.encode(inputs)[0]

    def encode(self, inputs: Mapping[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """The output vector and, with `augment`, the augmented vector (for the mimic loss)."""
        fields = torch.stack([self.embeddings[name](inputs[name]) for name in self.field_names], dim=1)
        if self.senet is not None:
            fields = self.senet(fields)
        flat = fields.flatten(1)
        aug = None
        if self.aug_field is not None:
            aug = self.aug(inputs[self.aug_field])
            flat = torch.cat([flat, aug], dim=1)
        out = self.mlp(flat)
        return F.normalize(out, p=2.0, dim=-1, eps=1e-12), aug


def id_field(tower: TowerSchema) -> FieldSpec:
    """The tower's categorical field that reads the entity id (the key of a per-id vector)."""
    for f in tower.fields:
        if f.source == tower.id_field and f.kind == "categorical":
            return f
    raise SchemaError(
        "schema",
        f"{tower.side}.fields",
        f"augmented vectors need a categorical field reading {tower.id_field!r}",
    )


class TwoTower(nn.Module):
    """The pair trained together; each tower is exported on its own."""

    def __init__(self, schema: FeatureSchema, **kwargs: object) -> None:
        super().__init__()
        self.user = Tower(schema.user, schema.vocabularies, **kwargs)  # type: ignore[arg-type]
        self.item = Tower(schema.item, schema.vocabularies, **kwargs)  # type: ignore[arg-type]

    def tower(self, side: Side) -> Tower:
        return self.user if side == "user" else self.item


def to_tensors(arrays: Mapping[str, object]) -> dict[str, Tensor]:
    """Encoder output (numpy) -> tensors, without copying."""
    return {k: torch.from_numpy(v) for k, v in arrays.items()}  # type: ignore[arg-type]
