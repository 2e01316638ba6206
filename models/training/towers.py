"""The PyTorch towers, built from a resolved schema: one embedding or projection per field (by kind),
optional SENet field gating, an optional MLP, an L2-normalised output of a dim shared by both towers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.features import FeatureSchema, FieldSpec, Side, TowerSchema


class FieldEmbedding(nn.Module):
    """One field -> [B, E].

    Id-like kinds (categorical, hashed, bucket, sequence, hashed_words) look up an embedding whose
    index 0 is zero (padding_idx), so OOV/missing adds nothing; multi_hot is a bias-free linear
    map of the 0/1 columns; numeric a linear map of the normalised scalar; vector a linear
    projection of the given embedding.
    """

    def __init__(self, spec: FieldSpec, cardinality: int, dim: int) -> None:
        super().__init__()
        self.kind = spec.kind
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
        if self.kind in ("sequence", "hashed_words"):
            # masked mean; EmbeddingBag is avoided because its ONNX export is poor
            mask = (x != 0).unsqueeze(-1).to(emb.dtype)
            count = mask.sum(dim=1).clamp(min=1.0)
            pooled: Tensor = (emb * mask).sum(dim=1) / count
            return pooled
        return emb


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
    ) -> None:
        super().__init__()
        self.side = tower.side
        self.field_names = [f.name for f in tower.fields]
        self.embeddings = nn.ModuleDict(
            {f.name: FieldEmbedding(f, f.cardinality(vocabularies), field_dim) for f in tower.fields}
        )
        self.senet = SENet(len(tower.fields)) if senet else None
        layers: list[nn.Module] = []
        width = field_dim * len(tower.fields)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, dim))
        self.mlp = nn.Sequential(*layers)
        self.dim = dim

    def forward(self, **inputs: Tensor) -> Tensor:
        fields = torch.stack([self.embeddings[name](inputs[name]) for name in self.field_names], dim=1)
        if self.senet is not None:
            fields = self.senet(fields)
        out = self.mlp(fields.flatten(1))
        return F.normalize(out, p=2.0, dim=-1, eps=1e-12)


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
