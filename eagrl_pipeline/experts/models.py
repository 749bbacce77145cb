"""Expert EHR models: ConCare, GRU, Transformer, AdaCare.

All share one call: ``forward(x, static, visit_mask, observed=None) -> logits (batch,)`` with
``x`` (batch, visits, features) z-scored, ``visit_mask`` True on real, left-aligned visits and
``observed`` the measured-that-day mask (treated as all measured when omitted). Padded visits
never reach the output: recurrences read the state at the last real visit, convolutions are
causal, attentions mask padded keys and pooling ignores padded queries.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from eagrl_pipeline.experts.config import ExpertConfig


def last_visit_index(visit_mask: Tensor) -> Tensor:
    """Index of each patient's last real visit (0 for a patient without any)."""
    return (visit_mask.long().sum(dim=1) - 1).clamp(min=0)


def gather_last(states: Tensor, visit_mask: Tensor) -> Tensor:
    """(batch, visits, hidden) -> (batch, hidden) at the last real visit."""
    idx = last_visit_index(visit_mask)
    return states[torch.arange(states.size(0), device=states.device), idx]


def attendable(visit_mask: Tensor) -> Tensor:
    """Visit mask for attention keys; a patient without visits sees its first slot, not NaN."""
    keys = visit_mask.clone()
    keys[:, 0] = True
    return keys


def _inputs(x: Tensor, observed: Tensor | None, use_observed: bool) -> Tensor:
    if not use_observed:
        return x
    obs = torch.ones_like(x) if observed is None else observed.to(x.dtype)
    return torch.cat([x, obs], dim=-1)


class ExpertModel(nn.Module):
    """Base class: keeps the auxiliary loss of the last training forward pass (ConCare's DeCov)."""

    name: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.aux_loss: Tensor | None = None


class GRUExpert(ExpertModel):
    """GRU over visits on values + observed mask; last real state + demographics -> logit."""

    name = "gru"

    def __init__(self, n_features: int, n_static: int, config: ExpertConfig) -> None:
        super().__init__()
        self.use_observed = config.use_observed
        n_in = n_features * (2 if config.use_observed else 1)
        self.gru = nn.GRU(n_in, config.hidden_dim, batch_first=True)
        self.head = nn.Sequential(
            nn.Dropout(config.dropout), nn.Linear(config.hidden_dim + n_static, 1)
        )

    def forward(
        self, x: Tensor, static: Tensor, visit_mask: Tensor, observed: Tensor | None = None
    ) -> Tensor:
        states, _ = self.gru(_inputs(x, observed, self.use_observed))
        return self.head(torch.cat([gather_last(states, visit_mask), static], dim=-1)).squeeze(-1)


def sinusoidal_encoding(length: int, dim: int, device: torch.device) -> Tensor:
    position = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, device=device).float() * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div)[:, : dim // 2]
    return pe


class TransformerExpert(ExpertModel):
    """Pre-norm Transformer encoder over visits; masked mean pooling + demographics -> logit."""

    name = "transformer"

    def __init__(self, n_features: int, n_static: int, config: ExpertConfig) -> None:
        super().__init__()
        self.use_observed = config.use_observed
        n_in = n_features * (2 if config.use_observed else 1)
        d = config.hidden_dim
        self.embed = nn.Linear(n_in, d)
        layer = nn.TransformerEncoderLayer(
            d, config.heads, 2 * d, config.dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(
            layer, config.transformer_layers, enable_nested_tensor=False
        )
        self.norm = nn.LayerNorm(d)
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(d + n_static, 1))

    def forward(
        self, x: Tensor, static: Tensor, visit_mask: Tensor, observed: Tensor | None = None
    ) -> Tensor:
        h = self.embed(_inputs(x, observed, self.use_observed))
        h = h + sinusoidal_encoding(h.size(1), h.size(2), h.device)
        h = self.norm(self.encoder(h, src_key_padding_mask=~attendable(visit_mask)))
        weights = visit_mask.to(h.dtype).unsqueeze(-1)
        pooled = (h * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.head(torch.cat([pooled, static], dim=-1)).squeeze(-1)


class GroupedGRU(nn.Module):
    """One small GRU per feature, all run together (per-feature weights, batched over features).

    ConCare's per-feature GRUs as batched matrix products over a (features, batch, hidden) state,
    so the loop is over visits only, never over features.
    """

    def __init__(self, n_groups: int, n_in: int, hidden: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(hidden)
        self.hidden = hidden
        self.w_ih = nn.Parameter(torch.empty(n_groups, n_in, 3 * hidden).uniform_(-bound, bound))
        self.w_hh = nn.Parameter(torch.empty(n_groups, hidden, 3 * hidden).uniform_(-bound, bound))
        self.b_ih = nn.Parameter(torch.empty(n_groups, 1, 3 * hidden).uniform_(-bound, bound))
        self.b_hh = nn.Parameter(torch.empty(n_groups, 1, 3 * hidden).uniform_(-bound, bound))

    def forward(self, u: Tensor) -> Tensor:
        """(batch, visits, groups, n_in) -> states (batch, visits, groups, hidden)."""
        b, t, g, _ = u.shape
        gi = torch.einsum("btgc,gch->tgbh", u, self.w_ih) + self.b_ih  # (t, g, b, 3H)
        h = u.new_zeros(g, b, self.hidden)
        states = []
        for step in range(t):
            gh = torch.baddbmm(self.b_hh, h, self.w_hh)
            i_r, i_z, i_n = gi[step].chunk(3, dim=-1)
            h_r, h_z, h_n = gh.chunk(3, dim=-1)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
            h = (1 - z) * n + z * h
            states.append(h)
        return torch.stack(states, dim=0).permute(2, 0, 1, 3)


class TimeAwareAttention(nn.Module):
    """ConCare's per-feature time-aware attention over that feature's GRU states.

    The last real state queries every visit; the score decays with the distance (in visits) from
    the last real visit at a learned per-feature rate, so recent days weigh more.
    """

    def __init__(self, n_groups: int, hidden: int, attn_dim: int = 8) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(hidden)
        self.w_q = nn.Parameter(torch.empty(n_groups, hidden, attn_dim).uniform_(-bound, bound))
        self.w_k = nn.Parameter(torch.empty(n_groups, hidden, attn_dim).uniform_(-bound, bound))
        self.rate = nn.Parameter(torch.full((n_groups,), 0.8))

    def forward(self, states: Tensor, visit_mask: Tensor) -> Tensor:
        """(batch, visits, groups, hidden) -> (batch, groups, hidden)."""
        b, t, _, _ = states.shape
        last = last_visit_index(visit_mask)
        q = torch.einsum("bgh,gha->bga", states[torch.arange(b, device=states.device), last],
                         self.w_q)  # fmt: skip
        k = torch.einsum("btgh,gha->bgta", states, self.w_k)
        dot = torch.sigmoid(torch.einsum("bga,bgta->bgt", q, k))
        steps = torch.arange(t, device=states.device)
        decay = (last.unsqueeze(1) - steps.unsqueeze(0)).clamp(min=0).to(dot.dtype) + 1.0
        denom = torch.sigmoid(self.rate).view(1, -1, 1) * torch.log(2.72 + (1 - dot))
        score = torch.relu(dot / (denom * decay.unsqueeze(1)))
        score = score.masked_fill(~attendable(visit_mask).unsqueeze(1), float("-inf"))
        attn = torch.softmax(score, dim=-1)
        return torch.einsum("bgt,btgh->bgh", attn, states)


class ConCareExpert(ExpertModel):
    """ConCare (Ma et al., AAAI 2020): per-feature GRUs and time attention, a demographic token,
    self-attention across feature tokens, and a final attention whose weights over the feature
    tokens are the per-patient feature importance."""

    name = "concare"

    def __init__(self, n_features: int, n_static: int, config: ExpertConfig) -> None:
        super().__init__()
        h = config.concare_hidden_dim
        self.use_observed = config.use_observed
        self.grus = GroupedGRU(n_features, 2 if config.use_observed else 1, h)
        self.time_attention = TimeAwareAttention(n_features, h)
        self.demo = nn.Linear(n_static, h)
        self.drop = nn.Dropout(config.dropout)
        self.norm1 = nn.LayerNorm(h)
        self.mha = nn.MultiheadAttention(h, config.heads, dropout=config.dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(h)
        self.ffn = nn.Sequential(
            nn.Linear(h, 2 * h), nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(2 * h, h)
        )
        self.w_q, self.w_k, self.w_v = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(h, 1))

    def _encode(
        self, x: Tensor, static: Tensor, visit_mask: Tensor, observed: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Patient vector and the final attention over (features + demographic) tokens."""
        u = x.unsqueeze(-1)
        if self.use_observed:
            obs = torch.ones_like(x) if observed is None else observed.to(x.dtype)
            u = torch.stack([x, obs], dim=-1)
        feats = self.time_attention(self.grus(u), visit_mask)  # (b, F, h)
        tokens = torch.cat([feats, torch.tanh(self.demo(static)).unsqueeze(1)], dim=1)
        tokens = self.drop(tokens)
        normed = self.norm1(tokens)
        context, _ = self.mha(normed, normed, normed, need_weights=False)
        if self.training:
            self.aux_loss = decov_loss(context)
        tokens = tokens + self.drop(context)
        tokens = tokens + self.drop(self.ffn(self.norm2(tokens)))
        q = self.w_q(tokens[:, -1])  # the demographic token asks which features matter
        scores = torch.einsum("bnh,bh->bn", self.w_k(tokens), q)
        attn = torch.softmax(scores, dim=-1)
        return torch.einsum("bn,bnh->bh", attn, self.w_v(tokens)), attn

    def forward(
        self, x: Tensor, static: Tensor, visit_mask: Tensor, observed: Tensor | None = None
    ) -> Tensor:
        pooled, _ = self._encode(x, static, visit_mask, observed)
        return self.head(pooled).squeeze(-1)

    def feature_weights(
        self, x: Tensor, static: Tensor, visit_mask: Tensor, observed: Tensor | None = None
    ) -> Tensor:
        """Final attention over feature tokens, demographic token dropped, renormalised."""
        _, attn = self._encode(x, static, visit_mask, observed)
        feats = attn[:, :-1]
        return feats / feats.sum(-1, keepdim=True).clamp(min=1e-12)


def decov_loss(context: Tensor) -> Tensor:
    """DeCov (Cogswell et al.): squared off-diagonal covariance of each token's hidden units
    across the batch, averaged over tokens; discourages redundant hidden units."""
    if context.size(0) < 2:
        return context.new_zeros(())
    c = context.float() - context.float().mean(dim=0, keepdim=True)
    cov = torch.einsum("bnh,bng->nhg", c, c) / (c.size(0) - 1)
    off = cov.pow(2).sum((1, 2)) - torch.diagonal(cov, dim1=1, dim2=2).pow(2).sum(-1)
    return 0.5 * off.mean()


class CausalConv1d(nn.Conv1d):
    """Conv1d that sees only the current and earlier visits (left padding, right trim)."""

    def __init__(self, n_in: int, n_out: int, kernel_size: int, dilation: int) -> None:
        self.trim = (kernel_size - 1) * dilation
        super().__init__(n_in, n_out, kernel_size, padding=self.trim, dilation=dilation)

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        return out[:, :, : -self.trim] if self.trim else out


class Recalibration(nn.Module):
    """Squeeze-excitation per visit: a bottleneck MLP gives each channel a weight in (0, 1)."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(channels, max(channels // reduction, 1)),
            nn.ReLU(),
            nn.Linear(max(channels // reduction, 1), channels),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(batch, visits, channels) -> recalibrated values and the weights."""
        weights = self.net(x)
        return x * weights, weights


class AdaCareExpert(ExpertModel):
    """AdaCare (Ma et al., AAAI 2020): dilated causal convolutions at three scales, feature
    recalibration of the convolution outputs and of the raw features, then a GRU. The input
    recalibration weights are the per-visit feature importance."""

    name = "adacare"

    def __init__(self, n_features: int, n_static: int, config: ExpertConfig) -> None:
        super().__init__()
        self.use_observed = config.use_observed
        n_conv_in = n_features * (2 if config.use_observed else 1)
        k = config.adacare_kernels
        self.convs = nn.ModuleList(CausalConv1d(n_conv_in, k, 2, d) for d in (1, 3, 5))
        self.conv_se = Recalibration(3 * k, 4)
        self.input_se = Recalibration(n_features, 4)
        self.gru = nn.GRU(3 * k + n_features, config.hidden_dim, batch_first=True)
        self.head = nn.Sequential(
            nn.Dropout(config.dropout), nn.Linear(config.hidden_dim + n_static, 1)
        )

    def _encode(
        self, x: Tensor, visit_mask: Tensor, observed: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        conv_in = _inputs(x, observed, self.use_observed).transpose(1, 2)
        conv = torch.relu(torch.cat([c(conv_in) for c in self.convs], dim=1)).transpose(1, 2)
        conv, _ = self.conv_se(conv)
        recal, weights = self.input_se(x)
        states, _ = self.gru(torch.cat([conv, recal], dim=-1))
        return gather_last(states, visit_mask), weights

    def forward(
        self, x: Tensor, static: Tensor, visit_mask: Tensor, observed: Tensor | None = None
    ) -> Tensor:
        last, _ = self._encode(x, visit_mask, observed)
        return self.head(torch.cat([last, static], dim=-1)).squeeze(-1)

    def feature_weights(
        self, x: Tensor, static: Tensor, visit_mask: Tensor, observed: Tensor | None = None
    ) -> Tensor:
        """Mean input recalibration weight over real visits, normalised to sum to 1."""
        _, weights = self._encode(x, visit_mask, observed)
        m = visit_mask.to(weights.dtype).unsqueeze(-1)
        mean = (weights * m).sum(1) / m.sum(1).clamp(min=1.0)
        return mean / mean.sum(-1, keepdim=True).clamp(min=1e-12)


MODELS: dict[str, Callable[[int, int, ExpertConfig], ExpertModel]] = {
    "concare": ConCareExpert,
    "gru": GRUExpert,
    "transformer": TransformerExpert,
    "adacare": AdaCareExpert,
}


def build_expert(name: str, n_features: int, n_static: int, config: ExpertConfig) -> ExpertModel:
    """Instantiate an expert by name ("concare", "gru", "transformer", "adacare")."""
    if name not in MODELS:
        raise ValueError(f"unknown expert model {name!r}; valid names: {', '.join(MODELS)}")
    return MODELS[name](n_features, n_static, config)
