"""Expert models on a tiny learnable cohort: training, padding invariance, rankings, persistence.

The toy signal: a patient's label shifts feature 0 in every real visit, the other features are
noise, so a trained model must lean on feature 0 and its ranking must say so.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from eagrl_pipeline.data.cohort import CohortArrays
from eagrl_pipeline.experts import (
    MODEL_NAMES,
    ExpertConfig,
    TrainedExpert,
    build_expert,
    feature_importance,
    load_expert,
    predict_proba,
    rank_features,
    save_expert,
    train_expert,
)

N_PATIENTS, N_VISITS, N_FEATURES = 120, 5, 6
FEATURE_IDS = [f"lab_{i}" for i in range(N_FEATURES)]
FAST = ExpertConfig(
    hidden_dim=16, concare_hidden_dim=8, adacare_kernels=8, heads=2, dropout=0.0, lr=1e-2,
    batch_size=16, max_epochs=3, patience=100, seed=7,
)  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and a busy machine does not stall them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def toy_cohort(seed: int = 0, shift: float = 1.5) -> CohortArrays:
    """Feature 0 is +shift in positives and -shift in negatives; 2-5 real visits each."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(N_PATIENTS) % 2).astype("int64")
    lengths = rng.integers(2, N_VISITS + 1, size=N_PATIENTS)
    mask = np.arange(N_VISITS)[None, :] < lengths[:, None]
    x = rng.normal(size=(N_PATIENTS, N_VISITS, N_FEATURES)).astype("float32")
    x[:, :, 0] += (shift * (2 * y - 1))[:, None]
    x[~mask] = 0.0
    observed = (rng.random(x.shape) < 0.7) & mask[:, :, None]
    split = np.array(["train"] * 80 + ["val"] * 20 + ["test"] * 20)
    return CohortArrays(
        x=x,
        observed=observed,
        visit_mask=mask,
        static=np.stack([rng.integers(0, 2, N_PATIENTS), rng.normal(size=N_PATIENTS)], 1).astype(
            "float32"
        ),
        y=y,
        patient_ids=np.arange(N_PATIENTS, dtype="int64"),
        group_ids=np.arange(N_PATIENTS, dtype="int64"),
        split=split,
        feature_ids=list(FEATURE_IDS),
    )


@pytest.fixture(scope="module")
def cohort() -> CohortArrays:
    return toy_cohort()


@pytest.fixture(scope="module")
def trained(cohort: CohortArrays) -> dict[str, TrainedExpert]:
    """Every model trained for three epochs once; several tests read them."""
    return {name: train_expert(cohort, name, FAST) for name in MODEL_NAMES}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_training_lowers_loss_and_changes_weights(
    name: str, cohort: CohortArrays, trained: dict[str, TrainedExpert]
) -> None:
    result = trained[name]
    assert len(result.history) == 3
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    torch.manual_seed(FAST.seed)
    initial = build_expert(name, N_FEATURES, 2, FAST).state_dict()
    changed = [not torch.equal(initial[k], v) for k, v in result.model.state_dict().items()]
    assert sum(changed) >= len(changed) // 2, f"{name}: too few parameters moved"
    assert result.n_parameters == sum(p.numel() for p in result.model.parameters())
    assert 1 <= result.best_epoch <= 3 and result.train_seconds > 0
    assert next(result.model.parameters()).device.type == "cpu"

    proba = predict_proba(result, cohort)
    assert proba.shape == (N_PATIENTS,)
    assert np.all((proba >= 0) & (proba <= 1))
    subset = predict_proba(result.model, cohort, indices=np.array([5, 1]))
    np.testing.assert_allclose(subset, proba[[5, 1]], atol=1e-6)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_padded_visits_do_not_change_outputs(name: str) -> None:
    torch.manual_seed(0)
    model = build_expert(name, N_FEATURES, 2, ExpertConfig(hidden_dim=16, concare_hidden_dim=8))
    model.eval()
    x = torch.randn(8, N_VISITS, N_FEATURES)
    static = torch.randn(8, 2)
    mask = torch.arange(N_VISITS)[None, :] < torch.tensor([1, 2, 3, 4, 5, 5, 2, 3])[:, None]
    observed = torch.rand(8, N_VISITS, N_FEATURES) > 0.3
    extra = 4
    x_pad = torch.cat([x, 50 * torch.randn(8, extra, N_FEATURES)], dim=1)
    mask_pad = torch.cat([mask, torch.zeros(8, extra, dtype=torch.bool)], dim=1)
    obs_pad = torch.cat([observed, torch.rand(8, extra, N_FEATURES) > 0.5], dim=1)
    # Garbage in the already-padded slots must not matter either.
    x_pad[:, :N_VISITS][~mask] = 99.0
    with torch.no_grad():
        base = model(x, static, mask, observed)
        padded = model(x_pad, static, mask_pad, obs_pad)
        torch.testing.assert_close(padded, base, atol=1e-5, rtol=0)
        if hasattr(model, "feature_weights"):
            torch.testing.assert_close(
                model.feature_weights(x_pad, static, mask_pad, obs_pad),
                model.feature_weights(x, static, mask, observed),
                atol=1e-5,
                rtol=0,
            )


@pytest.mark.parametrize(
    ("name", "method"),
    [
        ("concare", "concare_attention"),
        ("gru", "occlusion"),
        ("transformer", "occlusion"),
        ("adacare", "adacare_recalibration"),
    ],
)
def test_feature_importance_is_a_distribution_per_patient(
    name: str, method: str, cohort: CohortArrays, trained: dict[str, TrainedExpert]
) -> None:
    scores, got = feature_importance(trained[name], cohort, batch_size=50)
    assert got == method
    assert scores.shape == (N_PATIENTS, N_FEATURES)
    assert np.all(np.isfinite(scores)) and np.all(scores >= 0)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-6)
    ranking = rank_features(scores, FEATURE_IDS)
    assert len(ranking) == N_PATIENTS
    for row, patient_scores in zip(ranking, scores, strict=True):
        assert sorted(f for f, _ in row) == sorted(FEATURE_IDS)
        values = [s for _, s in row]
        assert values == sorted(values, reverse=True)
        assert max(values) == pytest.approx(patient_scores.max())
    subset, _ = feature_importance(trained[name].model, cohort, indices=np.array([3, 0]))
    np.testing.assert_allclose(subset, scores[[3, 0]], atol=1e-6)


def test_rank_features_top_k_and_ties() -> None:
    scores = np.array([[0.1, 0.6, 0.3], [0.25, 0.25, 0.5]])
    assert rank_features(scores, ["a", "b", "c"], top_k=2) == [
        [("b", 0.6), ("c", 0.3)],
        [("c", 0.5), ("a", 0.25)],
    ]


def test_occlusion_ranks_the_signal_feature_first(cohort: CohortArrays) -> None:
    config = ExpertConfig(
        hidden_dim=16, dropout=0.1, lr=1e-2, batch_size=16, max_epochs=30, patience=100, seed=3
    )
    result = train_expert(cohort, "gru", config)
    positives = np.flatnonzero(cohort.y == 1)
    scores, method = feature_importance(result, cohort, indices=positives)
    assert method == "occlusion"
    top = np.array([row[0][0] for row in rank_features(scores, FEATURE_IDS, top_k=1)])
    assert np.mean(top == "lab_0") > 0.6


def test_training_is_deterministic_and_reports_every_epoch(cohort: CohortArrays) -> None:
    config = ExpertConfig(
        concare_hidden_dim=8, heads=2, dropout=0.2, batch_size=32, max_epochs=2, seed=11
    )
    for name in ("gru", "concare"):
        seen: list[tuple[int, dict[str, float]]] = []
        first = train_expert(cohort, name, config, on_epoch=lambda e, m, s=seen: s.append((e, m)))
        second = train_expert(cohort, name, config)
        assert first.history == second.history
        assert [e for e, _ in seen] == [1, 2]
        assert set(seen[0][1]) == {"train_loss", "val_loss", "val_auroc", "val_auprc"}
        np.testing.assert_array_equal(predict_proba(first, cohort), predict_proba(second, cohort))


@pytest.mark.parametrize("name", ["concare", "adacare"])
def test_save_load_round_trip(
    name: str, cohort: CohortArrays, trained: dict[str, TrainedExpert], tmp_path: Path
) -> None:
    path = save_expert(trained[name], tmp_path / "expert")
    model, meta = load_expert(path)
    assert meta["name"] == name and meta["feature_ids"] == FEATURE_IDS
    assert meta["n_features"] == N_FEATURES and meta["n_static"] == 2
    assert ExpertConfig.from_dict(meta["config"]) == FAST
    np.testing.assert_array_equal(
        predict_proba(model, cohort), predict_proba(trained[name], cohort)
    )
    save_expert(trained[name], path)  # overwriting an existing folder works
    assert sorted(p.name for p in tmp_path.iterdir()) == ["expert"]


def test_unknown_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="concare, gru, transformer, adacare"):
        build_expert("lstm", N_FEATURES, 2, ExpertConfig())
    with pytest.raises(ValueError, match="mimic_iv"):
        ExpertConfig.for_dataset("eicu")


def test_dataset_presets() -> None:
    tjh = ExpertConfig.for_dataset("tjh")
    assert ExpertConfig.for_dataset("tjh-mortality") == tjh
    assert ExpertConfig.for_dataset("mimic_iv", seed=1).seed == 1
    assert tjh.hidden_dim <= ExpertConfig.for_dataset("mimic_iv").hidden_dim
    assert ExpertConfig.from_dict({**tjh.to_dict(), "from_the_future": 1}) == tjh
