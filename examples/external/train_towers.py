"""Two towers trained *outside* twotower: plain PyTorch modules over the encoded inputs of
examples/external/schema.toml, a few hundred steps of in-batch softmax on a generated shop, and
the ONNX export that `twotower import` takes. Walked through in docs/BRING_YOUR_MODEL.md.

    python examples/external/train_towers.py --out var/external
    # -> var/external/{user.onnx, item.onnx} and var/external/data/{users,items}.jsonl, interactions.csv
"""

from __future__ import annotations

import argparse
import json
import random
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.schema import load_schema
from models.transform import TowerEncoder

HERE = Path(__file__).resolve().parent
DIM = 32


# --- the towers: each takes the encoded inputs of its schema fields, by name -------------------


class UserTower(nn.Module):
    def __init__(self, n_users: int, n_items: int) -> None:
        super().__init__()
        self.user_id = nn.Embedding(n_users + 1, DIM)  # index 0: unknown user
        self.age = nn.Linear(1, DIM)
        self.history = nn.Embedding(n_items + 1, DIM, padding_idx=0)  # 0 pads: adds nothing
        self.mlp = nn.Sequential(nn.ReLU(), nn.Linear(DIM, DIM))

    def forward(self, user_id: torch.Tensor, age: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        seen = (history > 0).sum(1, keepdim=True).clamp_min(1)  # mean over real items only
        h = self.history(history).sum(1) / seen
        return self.mlp(self.user_id(user_id) + self.age(age.unsqueeze(1)) + h)


class ItemTower(nn.Module):
    def __init__(self, n_items: int, n_tags: int, text_dim: int) -> None:
        super().__init__()
        self.item_id = nn.Embedding(n_items + 1, DIM)
        self.price = nn.Linear(1, DIM)
        self.text_emb = nn.Linear(text_dim, DIM)
        self.tags = nn.Linear(n_tags, DIM, bias=False)
        self.mlp = nn.Sequential(nn.ReLU(), nn.Linear(DIM, DIM))

    def forward(
        self, item_id: torch.Tensor, price: torch.Tensor, text_emb: torch.Tensor, tags: torch.Tensor
    ) -> torch.Tensor:
        x = self.item_id(item_id) + self.price(price.unsqueeze(1)) + self.text_emb(text_emb) + self.tags(tags)
        return self.mlp(x)  # not normalised: served with --similarity dot


# --- a generated shop, consistent with the vocabulary files -------------------------------------


def make_data(
    out: Path, seed: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[tuple[str, str]]]:
    rng = random.Random(seed)
    users = (HERE / "vocab" / "user_id.txt").read_text().split()
    items = (HERE / "vocab" / "item_id.txt").read_text().split()
    tags = (HERE / "vocab" / "tags.txt").read_text().split()
    item_rows = [
        {
            "item_id": item,
            "price": round(rng.uniform(2, 80), 2),
            "text_emb": [round(rng.gauss(0, 1), 4) for _ in range(8)],
            "tags": rng.sample(tags, rng.randint(1, 2)),
        }
        for item in items
    ]
    user_rows = [{"user_id": user, "age": rng.randint(18, 75)} for user in users]
    events: list[tuple[str, str]] = []
    for n, user in enumerate(users):  # each user likes one tag
        liked = [it["item_id"] for it in item_rows if tags[n % len(tags)] in it["tags"]]
        events += [(user, item) for item in rng.sample(liked, min(12, len(liked)))]
    out.mkdir(parents=True, exist_ok=True)
    (out / "users.jsonl").write_text("".join(json.dumps(r) + "\n" for r in user_rows))
    (out / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in item_rows))
    lines = [f"{u},{i},{t}" for t, (u, i) in enumerate(events)]
    (out / "interactions.csv").write_text("user_id,item_id,timestamp\n" + "\n".join(lines) + "\n")
    return user_rows, item_rows, events


def train(steps: int, out: Path) -> tuple[UserTower, ItemTower]:
    user_rows, item_rows, events = make_data(out / "data")
    # twotower's own encoder turns raw rows into the inputs the served towers will get: training on
    # the same arrays is the simplest way to keep training and serving identical.
    schema = load_schema(HERE / "schema.toml").resolve()
    users, items = TowerEncoder(schema, "user"), TowerEncoder(schema, "item")
    by_user = {r["user_id"]: r for r in user_rows}
    by_item = {r["item_id"]: r for r in item_rows}
    history: dict[str, list[str]] = {}
    pairs = []
    for user, item in events:
        pairs.append(({**by_user[user], "history": list(history.get(user, []))}, by_item[item]))
        history.setdefault(user, []).append(item)

    torch.manual_seed(0)
    user_tower = UserTower(len(user_rows), len(item_rows))
    item_tower = ItemTower(len(item_rows), len(schema.vocabularies["tags"]), 8)
    opt = torch.optim.Adam([*user_tower.parameters(), *item_tower.parameters()], lr=0.01)
    rng = random.Random(0)
    for _ in range(steps):
        batch = rng.sample(pairs, 64)
        u = {k: torch.from_numpy(v) for k, v in users.encode([p[0] for p in batch]).items()}
        i = {k: torch.from_numpy(v) for k, v in items.encode([p[1] for p in batch]).items()}
        logits = user_tower(**u) @ item_tower(**i).T  # in-batch softmax: the other items are negatives
        loss = nn.functional.cross_entropy(logits, torch.arange(len(batch)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"trained {steps} steps, last loss {loss.item():.3f}")
    return user_tower, item_tower


def export(
    tower: nn.Module, example: dict[str, torch.Tensor], path: Path, lists: tuple[str, ...] = ()
) -> None:
    batch = torch.export.Dim("batch")
    dynamic = {
        name: {0: batch, 1: torch.export.Dim(f"{name}_len")} if name in lists else {0: batch}
        for name in example
    }
    tower.eval()  # dropout / batch norm in inference mode: rows must not depend on each other
    torch.onnx.export(
        tower,
        tuple(example.values()),  # positional, in the order of forward()'s parameters
        str(path),
        input_names=list(example),  # ONNX input names = schema field names
        output_names=["vector"],  # any name but "embedding" (the exporter uses it for nn.Embedding)
        dynamic_shapes=dynamic,  # the batch axis, and the length of sequence / hashed_words inputs
        dynamo=True,
        external_data=False,  # one self-contained file per tower
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    user_tower, item_tower = train(args.steps, args.out)
    user_example = {
        "user_id": torch.tensor([1, 2]),
        "age": torch.tensor([0.0, 1.0]),
        "history": torch.tensor([[1, 2, 0], [3, 0, 0]]),
    }
    item_example = {
        "item_id": torch.tensor([1, 2]),
        "price": torch.tensor([0.0, 1.0]),
        "text_emb": torch.zeros(2, 8),
        "tags": torch.zeros(2, 6),
    }
    with warnings.catch_warnings():  # the exporter is chatty about its own internals
        warnings.simplefilter("ignore")
        export(user_tower, user_example, args.out / "user.onnx", lists=("history",))
        export(item_tower, item_example, args.out / "item.onnx")
    print(f"wrote {args.out / 'user.onnx'} and {args.out / 'item.onnx'}")


if __name__ == "__main__":
    main()
