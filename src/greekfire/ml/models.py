"""Pricing networks: an MLP on contract features and an LSTM with attention over a market history window.

Both take raw (unscaled) features and carry their input scaling as their first layer, the data layer's
:class:`~greekfire.data.features.Normalizer` (statistics and feature names are buffers and extra state),
so a checkpoint is all a server needs: ``model(contract, seq)`` returns the target in the training units
(price / strike).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from greekfire.data.features import Normalizer

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
}


def make_activation(name: str) -> nn.Module:
    """The activation module called ``name`` (one of :data:`ACTIVATIONS`)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"model.activation={name!r}: expected one of {sorted(ACTIVATIONS)}") from None


def _names(given: Sequence[str] | None, n: int, prefix: str) -> list[str]:
    """Feature names for a normaliser: ``given`` (checked against ``n``) or ``prefix0``, ``prefix1``..."""
    if given is None:
        return [f"{prefix}{i}" for i in range(n)]
    if len(given) != n:
        raise ValueError(f"feature names {list(given)}: expected {n}, one per feature column")
    return list(given)


class MLPPricer(nn.Module):
    """Fully connected pricer on contract features (e.g. S/K, ttm, r, vol) -> price / strike.

    ``positive_output`` passes the last layer through softplus: option values are non-negative, and the
    paper benchmarks' targets (V/K) are too.
    """

    uses_sequence = False

    def __init__(
        self,
        n_contract: int,
        hidden: int = 100,
        layers: int = 4,
        activation: str = "silu",
        dropout: float = 0.0,
        positive_output: bool = False,
        *,
        contract_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.n_contract = n_contract
        self.normalizer = Normalizer([], _names(contract_names, n_contract, "c"))
        blocks: list[nn.Module] = []
        width = n_contract
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), make_activation(activation)]
            if dropout > 0:
                blocks.append(nn.Dropout(dropout))
            width = hidden
        blocks.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*blocks)
        self.positive_output = positive_output

    def forward(self, contract: Tensor, seq: Tensor | None = None) -> Tensor:
        """Price / strike for each row of ``contract`` [N, n_contract]; ``seq`` is ignored."""
        out = self.net(self.normalizer.scale_contract(contract)).squeeze(-1)
        return nn.functional.softplus(out) if self.positive_output else out


class OptionsPricingLSTM(nn.Module):
    """Input projection -> multi-layer LSTM -> multi-head attention over time steps -> head with contract features.

    ``seq`` is [N, window, n_seq] (market history, oldest first), ``contract`` is [N, n_contract]
    (moneyness, ttm, rate, right, ...). With ``baseline_index`` the output is that raw contract column plus
    the network's correction. The attention query is the last hidden state, so the model can
    weigh any day of the window against today; the head sees the attended summary, the last state and
    the contract features.
    """

    uses_sequence = True

    def __init__(
        self,
        n_seq: int,
        n_contract: int,
        proj_dim: int = 32,
        lstm_hidden: int = 64,
        lstm_layers: int = 2,
        attn_heads: int = 4,
        head_hidden: Sequence[int] = (64, 64),
        activation: str = "silu",
        dropout: float = 0.0,
        positive_output: bool = False,
        baseline_index: int | None = None,
        *,
        contract_names: Sequence[str] | None = None,
        seq_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if lstm_hidden % attn_heads:
            raise ValueError(f"model.lstm_hidden={lstm_hidden} must be divisible by model.attn_heads={attn_heads}")
        self.n_seq, self.n_contract = n_seq, n_contract
        self.normalizer = Normalizer(_names(seq_names, n_seq, "s"), _names(contract_names, n_contract, "c"))
        self.input_proj = nn.Sequential(nn.Linear(n_seq, proj_dim), make_activation(activation))
        self.lstm = nn.LSTM(
            proj_dim,
            lstm_hidden,
            num_layers=lstm_layers,
            batch_first=True,
            dropout=dropout if lstm_layers > 1 else 0.0,
        )
        self.attention = nn.MultiheadAttention(lstm_hidden, attn_heads, dropout=dropout, batch_first=True)
        self.attn_norm = nn.LayerNorm(lstm_hidden)
        layers: list[nn.Module] = []
        width = 2 * lstm_hidden + n_contract
        for h in head_hidden:
            layers += [nn.Linear(width, h), make_activation(activation)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, 1))
        self.head = nn.Sequential(*layers)
        self.positive_output = positive_output
        self.baseline_index = baseline_index
        if baseline_index is not None:
            # start exactly at the baseline: a randomly initialised head would add noise of the order of the
            # prices themselves, and on a short or shifted data set that noise is what early stopping keeps
            last = self.head[-1]
            assert isinstance(last, nn.Linear)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, contract: Tensor, seq: Tensor | None = None) -> Tensor:
        """Price / strike [N] from ``contract`` [N, n_contract] and ``seq`` [N, window, n_seq]."""
        if seq is None:
            raise ValueError("seq: OptionsPricingLSTM needs the market history window [N, window, n_seq]")
        hidden, _ = self.lstm(self.input_proj(self.normalizer.scale_seq(seq)))
        last = hidden[:, -1:, :]
        attended, _ = self.attention(last, hidden, hidden, need_weights=False)
        summary = self.attn_norm(attended.squeeze(1) + last.squeeze(1))
        features = torch.cat([summary, hidden[:, -1, :], self.normalizer.scale_contract(contract)], dim=-1)
        out = self.head(features).squeeze(-1)
        if self.baseline_index is not None:
            # residual form: the network learns the correction to a known price (e.g. Black-Scholes at
            # historical vol), so it starts from that baseline rather than from zero
            out = out + contract[:, self.baseline_index].to(out.dtype)
        return nn.functional.softplus(out) if self.positive_output else out
