"""Batches of token windows: a resumable, rank-aware training sampler and a fixed validation set.

Training windows are ``seq_len + 1`` tokens (inputs and the next-token targets). Epoch ``e`` draws, from a
generator seeded with ``(seed, e)``, an offset in ``[0, seq_len)`` and a permutation of the ``windows``
non-overlapping windows that start at that offset; ``windows`` is the same in every epoch (a window or so
short of ``len(tokens) // (seq_len + 1)``, so that any offset fits). The epochs' permutations, one after
the other, form one global stream of windows: global batch ``i`` is windows ``[i*G, (i+1)*G)`` of it, with
``G = batch_size * world_size``, and a batch that crosses an epoch's end simply continues into the next
epoch, so every window is used once per epoch. Rank ``r`` takes windows ``[r*batch_size, (r+1)*batch_size)``
of each global batch. The state is (epoch, position in the epoch): it is the same on every rank, and a
run may resume with another world size as long as the global batch is unchanged.
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import DataError

STATE_VERSION = 1


def _positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _gather(tokens: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """The windows ``tokens[s : s + length]`` as rows of an int64 array (copies only those tokens)."""
    return tokens[starts[:, None] + np.arange(length)].astype(np.int64)


def _pair(windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, 1:])
    return torch.from_numpy(x), torch.from_numpy(y)


class BatchSampler:
    """Deterministic, resumable training batches ``(x, y)`` of shape ``(batch_size, seq_len)`` for one rank."""

    def __init__(
        self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        _positive("batch_size", batch_size)
        _positive("seq_len", seq_len)
        _positive("world_size", world_size)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if tokens.ndim != 1:
            raise ValueError(f"tokens must be 1-D, got shape {tokens.shape}")
        span = seq_len + 1
        if len(tokens) < span:
            raise DataError(f"data: {len(tokens)} train tokens cannot fill one window of seq_len + 1 = {span}")
        self.tokens, self.batch_size, self.seq_len = tokens, int(batch_size), int(seq_len)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.global_batch = self.batch_size * self.world_size
        # As many windows as fit after the largest offset, seq_len - 1; a stream too short for that keeps
        # one window and draws the offset from whatever slack it has.
        self.windows = max(1, (len(tokens) - seq_len + 1) // span)
        self._max_offset = min(seq_len - 1, len(tokens) - self.windows * span)
        self._epoch, self._position = 0, 0
        self._plans: dict[int, tuple[int, np.ndarray]] = {}

    @property
    def epoch(self) -> int:
        """The epoch the next window comes from (0-based)."""
        return self._epoch

    def _plan(self, epoch: int) -> tuple[int, np.ndarray]:
        """(offset, window permutation) of ``epoch``, a function of (seed, epoch) only."""
        if epoch not in self._plans:
            rng = np.random.default_rng([self.seed, epoch])
            offset = int(rng.integers(0, self._max_offset + 1))
            self._plans = {e: p for e, p in self._plans.items() if e >= self._epoch}
            self._plans[epoch] = (offset, rng.permutation(self.windows))
        return self._plans[epoch]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's next ``(x, y)``: int64, ``(batch_size, seq_len)``, ``y`` is ``x`` shifted by one token."""
        first = self._epoch * self.windows + self._position + self.rank * self.batch_size
        index = np.arange(first, first + self.batch_size, dtype=np.int64)
        epochs, slots = np.divmod(index, self.windows)
        starts = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(epochs).tolist():
            offset, perm = self._plan(epoch)
            mask = epochs == epoch
            starts[mask] = offset + perm[slots[mask]] * (self.seq_len + 1)
        after = self._epoch * self.windows + self._position + self.global_batch
        self._epoch, self._position = divmod(after, self.windows)
        return _pair(_gather(self.tokens, starts, self.seq_len + 1))

    def _geometry(self) -> dict[str, int]:
        return {
            "seq_len": self.seq_len, "global_batch": self.global_batch, "windows": self.windows,
            "tokens": len(self.tokens), "seed": self.seed,
        }

    def state_dict(self) -> dict:
        """Where the sampler is (plain ints): the same on every rank of a run."""
        return {"version": STATE_VERSION, "epoch": self._epoch, "position": self._position, **self._geometry()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``; a state for other data or shapes is refused with a :class:`DataError`."""
        try:
            saved = {key: state[key] for key in ("version", "epoch", "position", *self._geometry())}
        except (KeyError, TypeError):
            raise DataError(f"data sampler state: not a BatchSampler state: {state!r:.200}") from None
        if saved["version"] != STATE_VERSION:
            raise DataError(f"data sampler state: version {saved['version']!r}, expected {STATE_VERSION}")
        differ = [f"{k} {saved[k]!r} -> {v!r}" for k, v in self._geometry().items() if saved[k] != v]
        if differ:
            raise DataError(
                "data sampler state: the checkpoint was made for other data or shapes (" + ", ".join(differ) + "); "
                "resume with the same data, seq_len, global batch size and seed"
            )
        epoch, position = saved["epoch"], saved["position"]
        if not (isinstance(epoch, int) and isinstance(position, int) and epoch >= 0 and 0 <= position < self.windows):
            raise DataError(f"data sampler state: invalid position (epoch {epoch!r}, position {position!r})")
        self._epoch, self._position = epoch, position


def validation_batches(
    tokens: np.ndarray, batch_size: int, seq_len: int, max_tokens: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed validation set: ``(x, y)`` batches of non-overlapping windows of the validation stream.

    All ``len(tokens) // (seq_len + 1)`` windows from the start are used while they hold at most
    ``max_tokens`` predicted tokens (``seq_len`` per window, one window at least); otherwise that many
    windows are taken evenly spaced over the whole stream, so every part of it (every validation document
    of a long stream) is sampled. The last batch may be smaller. No seed: the same every call.
    """
    _positive("batch_size", batch_size)
    _positive("seq_len", seq_len)
    _positive("max_tokens", max_tokens)
    span = seq_len + 1
    available = len(tokens) // span
    if available < 1:
        raise DataError(f"data: {len(tokens)} validation tokens cannot fill one window of seq_len + 1 = {span}")
    count = min(available, max(1, max_tokens // seq_len))
    starts = (np.arange(count, dtype=np.int64) * available // count) * span
    windows = _gather(tokens, starts, span)
    return [_pair(windows[i : i + batch_size]) for i in range(0, count, batch_size)]
