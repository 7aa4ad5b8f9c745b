"""The batch sampler: one call per engine step turns the last-position logits into tokens."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from services.types import SamplingParams
from worker.sampling.logprobs import raw_logprobs
from worker.sampling.penalties import add_logit_bias, mask_stop_tokens, penalise
from worker.sampling.rows import SampledToken, SamplingRow
from worker.sampling.seeding import uniforms
from worker.sampling.truncation import apply_min_p, apply_top_k, apply_top_p


class Sampler:
    """Samples one token per row, vectorised over the batch.

    Order of operations (as in vLLM and transformers): logit bias, penalties and the min_tokens
    mask on the raw logits; greedy rows take the argmax; random rows are divided by their
    temperature, truncated by top-k, top-p and min-p, and draw by inverse CDF with one uniform
    number per row, a seeded row's number coming from its own generator only. Logprobs, when asked
    for, describe the raw logits. Without bias or penalties a greedy row's token is exactly
    torch.argmax(logits).
    """

    def __init__(self, vocab_size: int, eos_token_ids: Sequence[int], device: str | torch.device,
                 argmax_kernel: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """`vocab_size` is the width of the logits (the model's vocab_size, padding included);
        `argmax_kernel` the compiled greedy_argmax (worker/engine/cpu_kernels), or None."""
        self.vocab_size = vocab_size
        self.eos_token_ids = list(eos_token_ids)
        self.device = torch.device(device)
        self._shared_generator = torch.Generator(device=self.device)
        self._argmax_kernel = argmax_kernel

    def sample(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> list[SampledToken]:
        """Row i of `logits` `[len(rows), vocab_size]` (any float dtype) belongs to `rows[i]`."""
        if logits.dim() != 2 or logits.shape[0] != len(rows) or logits.shape[1] != self.vocab_size:
            raise ValueError(f"logits {tuple(logits.shape)} do not match {len(rows)} rows x {self.vocab_size}")
        raw = logits.float()
        if all(_is_plain_greedy(row) for row in rows):
            return [SampledToken(token_id) for token_id in self._argmax(raw).tolist()]
        processed = self._processed(raw, rows)
        chosen = self._choose(processed, rows)
        return self._with_logprobs(raw, chosen, rows)

    def _processed(self, raw: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
        """The logits after logit bias, penalties and the min_tokens mask (`raw` itself when none
        applies)."""
        biased = [i for i, row in enumerate(rows) if row.params.logit_bias]
        penalised = [i for i, row in enumerate(rows) if _has_penalty(row.params)]
        early = [i for i, row in enumerate(rows) if len(row.output_token_ids) < row.params.min_tokens]
        if not biased and not penalised and not early:
            return raw
        logits = raw.clone()
        add_logit_bias(logits, biased, [rows[i].params.logit_bias for i in biased])
        if penalised:
            selected = [rows[i] for i in penalised]
            index = torch.tensor(penalised, device=logits.device)
            subset = logits.index_select(0, index)
            penalise(
                subset,
                prompts=[row.prompt_token_ids for row in selected],
                outputs=[row.output_token_ids for row in selected],
                repetition=_param_tensor(selected, logits.device, "repetition_penalty"),
                presence=_param_tensor(selected, logits.device, "presence_penalty"),
                frequency=_param_tensor(selected, logits.device, "frequency_penalty"),
            )
            logits.index_copy_(0, index, subset)
        # Until a row has min_tokens outputs, it may produce neither EOS nor its stop ids.
        stop_ids = [self.eos_token_ids + list(rows[i].params.stop_token_ids) for i in early]
        mask_stop_tokens(logits, early, stop_ids)
        return logits

    def _choose(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
        random_rows = [i for i, row in enumerate(rows) if not row.params.greedy]
        if len(random_rows) == len(rows):
            return self._draw(logits, rows)
        chosen = self._argmax(logits)
        if random_rows:
            index = torch.tensor(random_rows, device=logits.device)
            chosen[index] = self._draw(logits.index_select(0, index), [rows[i] for i in random_rows])
        return chosen

    def _draw(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
        """Random rows only: temperature, truncation, then one inverse-CDF draw per row.
        Tokens of probability 0 are never drawn."""
        logits = logits / _param_tensor(rows, logits.device, "temperature").unsqueeze(1)
        apply_top_k(logits, _param_tensor(rows, logits.device, "top_k", torch.int64))
        apply_top_p(logits, _param_tensor(rows, logits.device, "top_p"))
        apply_min_p(logits, _param_tensor(rows, logits.device, "min_p"))
        probs = logits.softmax(dim=1)
        cumulative = probs.cumsum(dim=1)
        total = cumulative[:, -1:]
        seeded = [
            (i, row.generator or self._shared_generator, row.params.seed, len(row.output_token_ids))
            for i, row in enumerate(rows)
            if row.params.seed is not None
        ]
        # Strictly below the total, so the first cumulative value above the target exists and
        # ends a token of positive probability.
        below_total = total.nextafter(total.new_zeros(()))
        targets = torch.minimum(uniforms(len(rows), logits.device, seeded).unsqueeze(1) * total, below_total)
        chosen = torch.searchsorted(cumulative, targets, right=True).clamp_(max=self.vocab_size - 1)
        # A parallel cumsum (on accelerators) may round across a zero-probability token; fall back
        # to the most likely token rather than ever return an excluded one.
        excluded = probs.gather(1, chosen) == 0
        if bool(excluded.any()):
            chosen = torch.where(excluded, self._argmax(probs).unsqueeze(1), chosen)
        return chosen.squeeze(1)

    def _argmax(self, logits: torch.Tensor) -> torch.Tensor:
        """torch.argmax over the vocabulary: the first index of each row's maximum. The compiled
        kernel answers where it can (32 x 49,152 float32 on 2 cores: 0.06 ms against torch's
        0.40-0.54; a bench-like greedy step's `sample`, min_tokens mask included, went from
        0.63-0.74 to 0.22-0.25 ms). Torch answers the rest, and any batch with a NaN, by its own
        rule; its max is about twice as fast as its argmax on the CPU and documented to return the
        same first index."""
        if (self._argmax_kernel is not None and logits.device.type == "cpu" and logits.dtype == torch.float32
                and logits.is_contiguous()):
            chosen = self._argmax_kernel(logits)
            if chosen.numel() == 0 or int(chosen.min()) >= 0:
                return chosen
        return logits.max(dim=1).indices

    def _with_logprobs(
        self, raw: torch.Tensor, chosen: torch.Tensor, rows: Sequence[SamplingRow]
    ) -> list[SampledToken]:
        tokens = [SampledToken(token_id) for token_id in chosen.tolist()]
        wanted = [i for i, row in enumerate(rows) if row.params.logprobs >= 0]
        if wanted:
            if len(wanted) < len(rows):
                index = torch.tensor(wanted, device=raw.device)
                raw, chosen = raw.index_select(0, index), chosen.index_select(0, index)
            positions = raw_logprobs(raw, chosen, [rows[i].params.logprobs for i in wanted])
            for i, position in zip(wanted, positions):
                tokens[i].logprobs = position
        return tokens


def _param_tensor(
    rows: Sequence[SamplingRow], device: torch.device, name: str, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """One sampling parameter of every row, as a `[len(rows)]` tensor."""
    return torch.tensor([getattr(row.params, name) for row in rows], dtype=dtype, device=device)


def _has_penalty(params: SamplingParams) -> bool:
    return params.repetition_penalty != 1.0 or params.presence_penalty != 0.0 or params.frequency_penalty != 0.0


def _is_plain_greedy(row: SamplingRow) -> bool:
    """A row whose token is just the argmax of its raw logits."""
    params = row.params
    return (
        params.greedy
        and params.logprobs < 0
        and not _has_penalty(params)
        and not params.logit_bias
        and len(row.output_token_ids) >= params.min_tokens
    )
