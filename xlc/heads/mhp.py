"""Multi-Head Product (MHE, Liang et al., TPAMI 2025): a label is a mixed-radix code, one head per digit."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from xlc.errors import ConfigError
from xlc.heads._chunked import chunk_ranges, topk_lowest_index, update_running_topk
from xlc.heads._targets import PAL_REDUCTIONS, check_choice, check_k, unique_targets
from xlc.heads.codec import MixedRadix, positive_pairs
from xlc.heads.etf import dot_regression, simplex_etf
from xlc.heads.mhp_cp import cp_loss, cp_topk

LOSSES = ("ce", "joint", "bce", "dr")
RANK_FORMS = ("mixture", "cp")
MULTI_LABEL_WARNING = (
    "head mhp with loss={loss!r}, rank_form={form!r} on multi-label targets: each positive is scored as a "
    "product of per-head distributions, which cannot hold several labels without their digit cross-products; "
    "heads that fit multi-label data: mhc (cascade, BCE) or bce (or mhp with loss='bce' or rank_form='cp')"
)
# Scores one top-k block may hold (beam candidates or exhaustive chunk), plus as many int64 codes: ~100 MB.
BLOCK_ELEMENTS = 2**23


class MHPHead(nn.Module):
    """One linear layer `in_dim -> G * sum_h L_h` gives logits O_g^h; label y has digits y_h (`codec`).

    rank_form "mixture" (default; a mixture of G products of per-head softmaxes, i.e. a non-negative CP
    decomposition of the probability tensor): p(y) ∝ sum_g prod_h exp(O_g^h[y_h]) over all prod L_h codes,
    i.e. log p(y) = logsumexp_g(log pi_g + sum_h log_softmax(O_g^h)[y_h]), pi = softmax_g(sum_h lse(O_g^h));
    G = 1 is MHP: sum_h log_softmax(O^h)[y_h]. rank_form "cp" (the paper's Eq. 16, loss "ce" only): one
    softmax over the CP logit tensor z(y) = sum_g prod_h O_g^h[y_h], chunked over codes (`mhp_cp`).
    loss: "ce" = -log p(y) (G=1 mixture: per-head CE summed),
    "joint" = one log-softmax over the concatenated heads (ImageNet code), "bce" = sigmoid BCE over them
    (CIFAR code), "dr" (etf=True) = per-head fixed ETF on BN + L2-normalised per-head features, dot regression;
    then one ETF per head (L_h vertices), not one over the labels, and topk ranks codes by
    sum_h log_softmax(c_h)[y_h] on the per-head cosines c_h = h_h^T M_h, i.e. at temperature 1.
    Multi-label: one code per positive label, each term above per positive, PAL-reduced (`multi_label_loss`).
    The per-positive product losses do not fit label sets, so with `multi_label=True` (training passes the
    dataset's) and no `loss` given, rank 1 and the mixture form default to "bce"; an explicit "ce"/"joint"
    there gets a UserWarning naming mhc / bce (at construction, or at the first multi-label batch when
    `multi_label` was not given). topk is exact (mixture: beam + threshold
    search over codes < num_labels; cp: chunked scan). https://arxiv.org/abs/2412.10182
    """

    def __init__(
        self,
        num_labels: int,
        in_dim: int,
        num_heads: int | None = None,
        sizes: list[int] | None = None,
        loss: str | None = None,
        rank: int = 1,
        etf: bool = False,
        reweight: bool = True,
        seed: int = 0,
        multi_label_loss: str = "pal_mean",
        rank_form: str = "mixture",
        chunk: int | None = None,
        multi_label: bool | None = None,
    ):
        super().__init__()
        if loss is None:  # on label sets the per-positive products do not fit; per-digit one-vs-all does better
            loss = "dr" if etf else "bce" if multi_label and rank == 1 and rank_form == "mixture" else "ce"
        check_choice("loss", loss, LOSSES)
        check_choice("rank_form", rank_form, RANK_FORMS)
        if rank_form == "cp" and loss != "ce":
            raise ConfigError(f"rank_form='cp' with loss={loss!r}: Eq. 16's softmax over the CP tensor is loss='ce' only")
        if (loss == "dr") != bool(etf):
            raise ConfigError(f"loss={loss!r} with etf={etf}: the dot-regression loss 'dr' goes with etf=true only")
        if not isinstance(rank, int) or rank < 1:
            raise ConfigError(f"rank={rank!r}: expected an integer >= 1")
        if rank > 1 and loss != "ce":
            raise ConfigError(f"rank={rank} with loss={loss!r}: rank > 1 is defined for loss='ce' only")
        check_choice("multi_label_loss", multi_label_loss, PAL_REDUCTIONS)
        self.codec = MixedRadix(num_labels, sizes=sizes, num_heads=num_heads)
        self.num_labels, self.in_dim, self.rank = num_labels, in_dim, rank
        self.objective, self.reweight, self.multi_label_loss = loss, reweight, multi_label_loss
        self.rank_form, self.chunk = rank_form, chunk
        # bce is one-vs-all per digit and cp one softmax over all labels (PAL): both fit label sets
        self._warned = loss == "bce" or rank_form == "cp"
        if multi_label:
            self._warn_multi_label()
        self.sizes = self.codec.sizes
        self.offsets = [sum(self.sizes[:h]) for h in range(len(self.sizes))]  # head h owns [off_h, off_h + L_h)
        self.linear = nn.Linear(in_dim, rank * sum(self.sizes))
        if etf:
            if min(self.sizes) < 2:
                raise ConfigError(f"etf=true with sizes={self.sizes}: every head needs >= 2 labels for an ETF")
            self.bn = nn.BatchNorm1d(sum(self.sizes))
            for h, size in enumerate(self.sizes):  # head h: features of dim L_h, a square ETF [L_h, L_h]
                self.register_buffer(f"etf{h}", simplex_etf(size, size, seed + h))
        self.etf = bool(etf)

    def _warn_multi_label(self) -> None:
        if not self._warned:
            warnings.warn(MULTI_LABEL_WARNING.format(loss=self.objective, form=self.rank_form), UserWarning, stacklevel=3)
            self._warned = True

    def _etf_features(self, features: torch.Tensor) -> list[torch.Tensor]:
        z = self.bn(self.linear(features))  # [B, sum L]
        return [F.normalize(part, dim=1, eps=1e-8) for part in z.split(self.sizes, dim=1)]  # H x [B, L_h]

    def head_logits(self, features: torch.Tensor) -> list[torch.Tensor]:
        """Per-head logits, H tensors `[B, G, L_h]` (etf: the cosines h_h^T M_h, G = 1)."""
        if self.etf:
            return [(h @ getattr(self, f"etf{i}"))[:, None] for i, h in enumerate(self._etf_features(features))]
        z = self.linear(features).view(features.shape[0], self.rank, -1)  # [B, G, sum L]
        return list(z.split(self.sizes, dim=2))

    def log_probs(self, features: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(H tensors log_softmax(O_g^h) `[B, G, L_h]`, log pi `[B, G]`)."""
        logits = self.head_logits(features)
        log_pi = torch.stack([o.logsumexp(2) for o in logits]).sum(0).log_softmax(1)  # [B, G]
        return [o.log_softmax(2) for o in logits], log_pi

    def _log_prob(self, logp: list[torch.Tensor], log_pi: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor):
        """Exact log p(labels) `[N]` for rows `[N]`; labels outside [0, num_labels) get -inf."""
        valid = (labels >= 0) & (labels < self.num_labels)  # [N]
        digits = self.codec.encode(labels.clamp(0, self.num_labels - 1))  # [N, H]
        comp = torch.arange(self.rank, device=rows.device)[None, :]  # [1, G]
        term = log_pi[rows]  # [N, G]
        for h, lp in enumerate(logp):
            term = term + lp[rows[:, None], comp, digits[:, h : h + 1]]  # [N, G]
        return term.logsumexp(1).masked_fill(~valid, -torch.inf)  # [N]

    def loss(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        batch = features.shape[0]
        if not self._warned and targets.dim() == 2 and ((unique_targets(targets) >= 0).sum(1) > 1).any():
            self._warn_multi_label()
        if self.rank_form == "cp":
            return cp_loss(self.codec, self.linear(features), targets, self.rank, self.chunk, self.multi_label_loss)
        rows, labels, weights = positive_pairs(targets, self.num_labels, batch, self.multi_label_loss)
        weights = weights.to(features.dtype)
        if self.objective == "ce":
            return -(weights * self._log_prob(*self.log_probs(features), rows, labels)).sum() / batch
        digits = self.codec.encode(labels)  # [N, H]
        if self.objective == "dr":
            feats = self._etf_features(features)
            parts = [
                dot_regression(h[rows], getattr(self, f"etf{i}"), digits[:, i], weights, batch, self.reweight)
                for i, h in enumerate(feats)
            ]
            return torch.stack(parts).sum()
        z = self.linear(features)  # [B, sum L]
        columns = digits + torch.tensor(self.offsets, device=digits.device)  # [N, H] positions in the concatenation
        if self.objective == "joint":
            picked = z.log_softmax(1)[rows[:, None], columns].sum(1)  # [N]
            return -(weights * picked).sum() / batch
        target = torch.zeros_like(z)  # [B, sum L] multi-hot: every positive's digit in every head
        target[rows[:, None], columns] = 1.0
        return F.binary_cross_entropy_with_logits(z, target)

    def _k_best(self, logp: list[torch.Tensor], width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact k-best valid codes of the separable score sum_h logp_h[y_h], rows `[R, L_h]` -> `[R, width]`.

        Beam over heads, most significant first. A prefix whose completions are all >= num_labels is
        dropped; at most one kept prefix is partly valid, so keeping width + 1 prefixes leaves >= width
        fully valid ones, each beating every pruned prefix's completions: the beam stays exact.
        """
        scores = logp[0].new_zeros(logp[0].shape[0], 1)  # [R, 1]
        prefix = torch.zeros_like(scores, dtype=torch.long)  # [R, 1] the code's leading digits as a number
        for h, lp in enumerate(logp):
            size, last = lp.shape[1], h == len(logp) - 1
            cand = scores[:, :, None] + lp[:, None, :]  # [R, W, L_h]
            code = prefix[:, :, None] * size + torch.arange(size, device=lp.device)  # [R, W, L_h]
            cand = cand.masked_fill(code * self.codec.strides[h] >= self.num_labels, -torch.inf)
            keep = min(width if last else width + 1, cand[0].numel())
            scores, idx = cand.flatten(1).topk(keep, dim=1)  # [R, keep]
            prefix = code.flatten(1).gather(1, idx)
        return scores, prefix

    @torch.no_grad()
    def topk(self, features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact top-k of log p(y) over valid labels (for G > 1, ties go to the lower label); "cp": of z(y).

        G = 1: the beam of `_k_best`. G > 1: Fagin's threshold algorithm over the G components: take each
        component's `depth`-best list and score their union exactly; every unseen label scores at most
        logsumexp_g(log pi_g + depth-th score of list g), so a row is done once its k-th seen score reaches
        that bound, else the depth grows 4x. Rows still open when a beam would pass `BLOCK_ELEMENTS`
        scores are scored exhaustively over label chunks (exact, O(C) per row). Rows go in blocks too.
        """
        check_k(k, self.num_labels)
        if self.rank_form == "cp":
            return cp_topk(self.codec, self.linear(features), k, self.rank, self.chunk)
        logp, log_pi = self.log_probs(features)
        block = max(1, BLOCK_ELEMENTS // (self.rank * (k + 1) * max(self.sizes)))  # rows per beam block
        parts = [
            self._topk_rows([lp[lo:hi] for lp in logp], log_pi[lo:hi], k)
            for lo, hi in chunk_ranges(features.shape[0], block)
        ]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _topk_rows(self, logp: list[torch.Tensor], log_pi: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch, rank = log_pi.shape
        if rank == 1:
            return self._k_best([lp[:, 0] for lp in logp], k)
        scores = log_pi.new_empty(batch, k)  # [B, k]
        labels = torch.empty(batch, k, dtype=torch.long, device=log_pi.device)  # [B, k]
        pending = torch.arange(batch, device=log_pi.device)  # rows not yet proven exact
        depth = k
        while pending.numel() and pending.numel() * rank * (depth + 1) * max(self.sizes) <= BLOCK_ELEMENTS:
            n, sub, sub_pi = pending.numel(), [lp[pending] for lp in logp], log_pi[pending]
            lists, cand = self._k_best([lp.reshape(n * rank, -1) for lp in sub], depth)  # [n*G, depth]
            cand, _ = cand.view(n, rank * depth).sort(dim=1)  # [n, G*depth]
            rows = torch.arange(n, device=cand.device).repeat_interleave(rank * depth)
            seen = self._log_prob(sub, sub_pi, rows, cand.flatten()).view(n, -1)  # [n, G*depth]
            seen[:, 1:] = seen[:, 1:].masked_fill(cand[:, 1:] == cand[:, :-1], -torch.inf)  # one copy each
            top, idx = topk_lowest_index(seen, k)  # [n, k]
            bound = (lists.view(n, rank, depth)[:, :, -1] + sub_pi).logsumexp(1)  # [n]
            done = (top[:, -1] >= bound) | (depth >= self.num_labels)  # [n]
            scores[pending[done]], labels[pending[done]] = top[done], cand.gather(1, idx)[done]
            pending, depth = pending[~done], min(4 * depth, self.num_labels)
        if pending.numel():
            scores[pending], labels[pending] = self._exhaustive_topk([lp[pending] for lp in logp], log_pi[pending], k)
        return scores, labels

    def _exhaustive_topk(self, logp: list[torch.Tensor], log_pi: torch.Tensor, k: int):
        """Exact top-k by scoring every label, a chunk of labels at a time (`[B, G, chunk]` at most)."""
        batch, rank = log_pi.shape
        scores = log_pi.new_empty(batch, 0)  # [B, <=k]
        labels = torch.empty(batch, 0, dtype=torch.long, device=log_pi.device)  # [B, <=k]
        for lo, hi in chunk_ranges(self.num_labels, max(k, BLOCK_ELEMENTS // (batch * rank))):
            digits = self.codec.encode(torch.arange(lo, hi, device=log_pi.device))  # [c, H]
            term = log_pi[:, :, None]  # [B, G, 1]
            for h, lp in enumerate(logp):
                term = term + lp.index_select(2, digits[:, h])  # [B, G, c]
            s, i = topk_lowest_index(term.logsumexp(1), min(k, hi - lo))  # [B, k']
            scores, labels = update_running_topk(scores, labels, s, i + lo, k)
        return scores, labels


__all__ = ["MHPHead"]
