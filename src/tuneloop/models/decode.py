"""Step-by-step batched decoding with rows that join and leave: the serving engine.

`generate` (models/generate.py) answers a fixed list of prompts with `model.generate`; a
server needs more: a request that arrives while others are decoding joins the batch at the
next step (continuous batching), a finished or abandoned request leaves it at once, every
row has its own budget, sampling settings and seed, and tokens come out one step at a time
for streaming. `Decoder` does that over the model's own KV cache.

How the batch is kept: one `DynamicCache` whose rows are left-padded to a common length, a
2-D attention mask (0 over each row's padding), and each row's next position. A joining
group is prefilled on its own and concatenated after padding both caches on the left to the
same length; a leaving row is dropped with `batch_select_indices`, and columns that have
become padding for every row are cut, so the cache never outgrows its longest live row.
Positions and masks are exactly what `model.generate` builds for a left-padded batch, so
greedy rows answer what `generate` answers (tests/serving/test_serve.py).

Models whose cache is not a plain per-layer dynamic cache (sliding-window or hybrid
layers) cannot be concatenated: the decoder then admits a group only when the batch is
empty (`can_join`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Row:
    """One sequence being decoded. `key` is the caller's handle."""

    key: Any
    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    adapter: str | None = None  # a peft adapter name (multi-adapter models), None: base
    ids: list[int] = field(default_factory=list)  # generated so far
    generator: Any = None


class Decoder:
    """A batch of rows decoded one token per step (see the module docstring)."""

    def __init__(self, model: Any, pad_id: int | None) -> None:
        self.model = model
        self.pad_id = 0 if pad_id is None else int(pad_id)
        self.device = next(model.parameters()).device
        self.rows: list[Row] = []
        self.cache: Any = None
        self.mask: Any = None  # (rows, columns) long
        self.positions: Any = None  # (rows,) next position of each row
        self.last: Any = None  # (rows,) the token each row feeds next
        self._mergeable = True
        # a peft model with several adapters: each row is run through its own
        self._multi = hasattr(model, "peft_config")

    def _adapters(self, rows: list[Row]) -> dict[str, Any]:
        if not self._multi:
            return {}
        return {"adapter_names": [r.adapter or "__base__" for r in rows]}

    def __len__(self) -> int:
        return len(self.rows)

    def can_join(self) -> bool:
        return not self.rows or self._mergeable

    def add(self, rows: list[Row]) -> list[int]:
        """Prefill `rows` and add them to the batch; returns each one's first token."""
        import torch

        if not rows:
            return []
        if not self.can_join():
            raise RuntimeError("this model's cache cannot take rows while others decode")
        from tuneloop.models.generate import left_pad

        ids, mask = left_pad([r.prompt_ids for r in rows], self.pad_id)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            out = self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device),
                use_cache=True,
                **self._adapters(rows),
            )
        cache = out.past_key_values
        for row in rows:
            if row.temperature > 0:
                row.generator = torch.Generator(device=self.device)
                row.generator.manual_seed(
                    row.seed if row.seed is not None else int(torch.seed() % 2**63)
                )
        first = self._choose(out.logits[:, -1], rows)
        mask = mask.to(self.device)
        nxt = mask.sum(-1)
        if not self.rows:
            self.cache, self.mask, self.positions = cache, mask, nxt
            self.last = torch.tensor(first, device=self.device)
            self._mergeable = _plain_layers(cache)
        else:
            self._merge(cache, mask, nxt, first)
        self.rows.extend(rows)
        for row, tok in zip(rows, first, strict=True):
            row.ids.append(tok)
        return first

    def step(self) -> list[int]:
        """One token for every row (in `rows` order), fed back for the next step."""
        import torch

        if not self.rows:
            return []
        ones = torch.ones((len(self.rows), 1), dtype=self.mask.dtype, device=self.device)
        self.mask = torch.cat([self.mask, ones], 1)
        with torch.inference_mode():
            out = self.model(
                input_ids=self.last[:, None],
                attention_mask=self.mask,
                position_ids=self.positions[:, None],
                past_key_values=self.cache,
                use_cache=True,
                **self._adapters(self.rows),
            )
        self.cache = out.past_key_values
        self.positions = self.positions + 1
        chosen = self._choose(out.logits[:, -1], self.rows)
        self.last = torch.tensor(chosen, device=self.device)
        for row, tok in zip(self.rows, chosen, strict=True):
            row.ids.append(tok)
        return chosen

    def keep(self, keys: set[Any]) -> None:
        """Drop every row whose key is not in `keys` (finished, cancelled)."""
        import torch

        idx = [i for i, r in enumerate(self.rows) if r.key in keys]
        if len(idx) == len(self.rows):
            return
        if not idx:
            self.rows, self.cache, self.mask, self.positions, self.last = [], None, None, None, None
            return
        sel = torch.tensor(idx, device=self.device)
        self.rows = [self.rows[i] for i in idx]
        self.cache.batch_select_indices(sel)
        self.mask, self.positions, self.last = self.mask[sel], self.positions[sel], self.last[sel]
        if self._mergeable:  # cut the columns that are padding for every remaining row
            live = self.mask.any(0).nonzero()
            start = int(live[0]) if len(live) else 0
            if start > 0:
                for layer in self.cache.layers:
                    layer.keys = layer.keys[:, :, start:]
                    layer.values = layer.values[:, :, start:]
                self.mask = self.mask[:, start:]

    def _merge(self, cache: Any, mask: Any, nxt: Any, first: list[int]) -> None:
        import torch

        old_w, new_w = self.mask.shape[1], mask.shape[1]
        width = max(old_w, new_w)

        def pad(t: Any, w: int) -> Any:  # left-pad the sequence dimension (-2 for k/v)
            if w == width:
                return t
            shape = list(t.shape)
            shape[-2] = width - w
            return torch.cat([t.new_zeros(shape), t], -2)

        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([pad(mine.keys, old_w), pad(theirs.keys, new_w)], 0)
            mine.values = torch.cat([pad(mine.values, old_w), pad(theirs.values, new_w)], 0)

        def pad_mask(m: Any, w: int) -> Any:
            return torch.cat([m.new_zeros((m.shape[0], width - w)), m], 1)

        self.mask = torch.cat([pad_mask(self.mask, old_w), pad_mask(mask, new_w)], 0)
        self.positions = torch.cat([self.positions, nxt])
        self.last = torch.cat([self.last, torch.tensor(first, device=self.device)])

    @staticmethod
    def _choose(logits: Any, rows: list[Row]) -> list[int]:
        """Greedy for temperature 0, else nucleus sampling with each row's own generator."""
        import torch

        greedy = logits.argmax(-1).tolist()
        out = []
        for i, row in enumerate(rows):
            if row.temperature <= 0:
                out.append(int(greedy[i]))
                continue
            probs = torch.softmax(logits[i].float() / row.temperature, -1)
            if row.top_p < 1.0:
                sorted_p, order = probs.sort(descending=True)
                # keep the smallest prefix whose mass reaches top_p (always the first token)
                drop = sorted_p.cumsum(0) - sorted_p >= row.top_p
                sorted_p[drop] = 0
                probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
            out.append(int(torch.multinomial(probs, 1, generator=row.generator)))
        return out


def _plain_layers(cache: Any) -> bool:
    """Whether every layer of `cache` is a plain dynamic layer (safe to concatenate)."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # pragma: no cover - older transformers
        return False
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)
