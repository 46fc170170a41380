"""Losses against small cases worked out by hand and against plain-Python re-statements of their formulas."""

from __future__ import annotations

import math

import pytest
import torch

from m3embed.train.losses import (
    colbert_score_matrix,
    info_nce,
    local_group,
    m3_kd_loss,
    m3_loss,
    mode_loss,
    soft_cross_entropy,
)

TAU = 0.02


def ce(row: list[float], target: int) -> float:
    """-log softmax(row)[target], in plain Python."""
    m = max(row)
    return -(row[target] - m - math.log(sum(math.exp(x - m) for x in row)))


def softmax(row: list[float]) -> list[float]:
    m = max(row)
    e = [math.exp(x - m) for x in row]
    return [x / sum(e) for x in e]


def nce(scores: torch.Tensor, group_size: int, tau: float = TAU) -> float:
    """Mean over queries of CE(scores_b / τ, b·G), looping in Python."""
    rows = (scores.double() / tau).tolist()
    return sum(ce(r, b * group_size) for b, r in enumerate(rows)) / len(rows)


def soft(scores: torch.Tensor, teacher: list[list[float]], tau: float = TAU) -> float:
    rows = (scores.double() / tau).tolist()
    total = 0.0
    for r, t in zip(rows, teacher):
        m = max(r)
        lse = m + math.log(sum(math.exp(x - m) for x in r))
        total += -sum(tj * (x - lse) for tj, x in zip(t, r))
    return total / len(rows)


@pytest.fixture
def scores() -> dict[str, torch.Tensor]:
    """Raw (B=2, B·G=6) scores of three modes, G=3: dense/colbert cosines, sparse unnormalised."""
    g = torch.Generator().manual_seed(0)
    return {
        "dense": torch.rand(2, 6, generator=g) * 0.4 + 0.3,
        "sparse": torch.rand(2, 6, generator=g) * 0.3,
        "colbert": torch.rand(2, 6, generator=g) * 0.4 + 0.4,
    }


def test_info_nce_hand_computed():
    # one query, G=2, τ=1: -log(e² / (e² + e⁰)) = log(1 + e⁻²)
    assert info_nce(torch.tensor([[2.0, 0.0]]), group_size=2).item() == pytest.approx(
        math.log1p(math.exp(-2))
    )
    # two queries, G=1: the positive of query 1 is column 1, the other query's passage is an in-batch negative
    s = torch.tensor([[1.0, 0.0], [0.5, 0.0]])
    expected = (math.log1p(math.exp(-1)) + math.log1p(math.exp(0.5))) / 2
    assert info_nce(s, group_size=1).item() == pytest.approx(expected)


def test_colbert_score_matrix_follows_the_formula():
    g = torch.Generator().manual_seed(1)
    q = torch.nn.functional.normalize(torch.randn(2, 3, 4, generator=g), dim=-1)
    p = torch.nn.functional.normalize(torch.randn(3, 5, 4, generator=g), dim=-1)
    q_mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    p_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    q, p = q * q_mask[..., None], p * p_mask[..., None]  # zero rows on padding, as the model returns them
    got = colbert_score_matrix(q, p, q_mask, p_mask)
    for b in range(2):
        for n in range(3):
            n_q = int(q_mask[b].sum())
            expected = (
                sum(max(float(q[b, i] @ p[n, j]) for j in range(int(p_mask[n].sum()))) for i in range(n_q))
                / n_q
            )
            assert got[b, n].item() == pytest.approx(expected, abs=1e-6)


def test_colbert_without_passage_mask_floors_at_zero_like_flagembedding():
    q = torch.tensor([[[1.0, 0.0]]])  # one query vector
    p = torch.tensor([[[-1.0, 0.0], [0.0, 0.0]]])  # one real vector pointing away, one zero pad row
    assert colbert_score_matrix(q, p, torch.ones(1, 1), torch.tensor([[1, 0]])).item() == pytest.approx(-1.0)
    assert colbert_score_matrix(q, p, torch.ones(1, 1)).item() == pytest.approx(0.0)


def test_colbert_gradient_with_in_place_mask_matches_out_of_place():
    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, 3, 4, generator=g, requires_grad=True)
    p = torch.randn(4, 5, 4, generator=g, requires_grad=True)
    q_mask, p_mask = torch.ones(2, 3), (torch.rand(4, 5, generator=g) > 0.3).long()
    p_mask[:, 0] = 1
    colbert_score_matrix(q, p, q_mask, p_mask).sum().backward()
    ref_q, ref_p = q.detach().clone().requires_grad_(), p.detach().clone().requires_grad_()
    sim = torch.einsum("bih,njh->binj", ref_q, ref_p).masked_fill(~p_mask.bool()[None, None], float("-inf"))
    sim.amax(-1).mean(1).sum().backward()
    torch.testing.assert_close(q.grad, ref_q.grad)
    torch.testing.assert_close(p.grad, ref_p.grad)


def test_single_mode_is_its_info_nce(scores):
    out = m3_loss({"dense": scores["dense"]}, group_size=3, temperature=TAU, self_distill=True)
    assert out.loss.item() == pytest.approx(nce(scores["dense"], 3), rel=1e-5)
    assert set(out.parts) == {"dense"}


def test_unified_loss_matches_reference_formula(scores):
    out = m3_loss(scores, group_size=3, temperature=TAU)
    inter = scores["dense"] + 0.3 * scores["sparse"] + scores["colbert"]
    ld, ls, lc = (nce(scores[m], 3) for m in ("dense", "sparse", "colbert"))
    li = nce(inter, 3)
    expected = (ld + li + 0.1 * ls + lc) / 4
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    for name, value in {"dense": ld, "sparse": ls, "colbert": lc, "inter": li}.items():
        assert out.parts[name].item() == pytest.approx(value, rel=1e-5)


def test_self_distillation_matches_reference_formula(scores):
    out = m3_loss(scores, group_size=3, temperature=TAU, self_distill=True)
    inter = scores["dense"] + 0.3 * scores["sparse"] + scores["colbert"]
    teacher = [softmax(r) for r in (inter.double() / TAU).tolist()]
    big_l = (
        nce(scores["dense"], 3) + nce(inter, 3) + 0.1 * nce(scores["sparse"], 3) + nce(scores["colbert"], 3)
    ) / 4
    small_l = (
        soft(scores["dense"], teacher)
        + 0.1 * soft(scores["sparse"], teacher)
        + soft(scores["colbert"], teacher)
    ) / 3
    assert out.parts["distill"].item() == pytest.approx(small_l, rel=1e-5)
    assert out.loss.item() == pytest.approx((big_l + small_l) / 2, rel=1e-5)


def test_self_distillation_teacher_is_detached(scores):
    leaf = {m: s.clone().requires_grad_() for m, s in scores.items()}
    m3_loss(leaf, 3, TAU, self_distill=True).loss.backward()
    detached_teacher = {m: s.clone().requires_grad_() for m, s in scores.items()}
    # same loss with the teacher computed from separate (constant) copies: gradients must agree
    logits = {m: detached_teacher[m] / TAU for m in scores}
    inter_const = (scores["dense"] + 0.3 * scores["sparse"] + scores["colbert"]) / TAU
    target = torch.softmax(inter_const, -1)
    inter = logits["dense"] + 0.3 * logits["sparse"] + logits["colbert"]
    big_l = (
        info_nce(logits["dense"], 3)
        + info_nce(inter, 3)
        + 0.1 * info_nce(logits["sparse"], 3)
        + info_nce(logits["colbert"], 3)
    ) / 4
    small_l = (
        soft_cross_entropy(logits["dense"], target)
        + 0.1 * soft_cross_entropy(logits["sparse"], target)
        + soft_cross_entropy(logits["colbert"], target)
    ) / 3
    ((big_l + small_l) / 2).backward()
    for m in scores:
        torch.testing.assert_close(leaf[m].grad, detached_teacher[m].grad)


def test_two_modes_use_their_own_ensemble(scores):
    sub = {"dense": scores["dense"], "sparse": scores["sparse"]}
    out = m3_loss(sub, group_size=3, temperature=TAU)
    inter = scores["dense"] + 0.3 * scores["sparse"]
    expected = (nce(scores["dense"], 3) + 0.1 * nce(scores["sparse"], 3) + nce(inter, 3)) / 3
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)


def test_m3_kd_loss_hand_loop_and_one_hot_teacher(scores):
    s = scores["dense"] / TAU
    teacher = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]])
    rows = s.double().tolist()
    expected = 0.0
    for i in range(3):  # Σ_i mean_b T[b,i]·CE with the earlier group columns removed
        terms = []
        for b, r in enumerate(rows):
            kept = [x for j, x in enumerate(r) if not (b * 3 <= j < b * 3 + i)]
            terms.append(teacher[b, i].item() * ce(kept, b * 3))  # column b·3+i moves to b·3 once i removed
        expected += sum(terms) / len(terms)
    assert m3_kd_loss(s, teacher, 3).item() == pytest.approx(expected, rel=1e-5)
    one_hot = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert m3_kd_loss(s, one_hot, 3).item() == pytest.approx(info_nce(s, 3).item(), rel=1e-6)


def test_kl_div_teacher_loss_is_group_soft_ce_plus_info_nce(scores):
    s = scores["colbert"] / TAU
    teacher = torch.tensor([[0.6, 0.3, 0.1], [0.4, 0.4, 0.2]])
    expected = soft(local_group(scores["colbert"], 3), teacher.tolist()) + nce(scores["colbert"], 3)
    assert mode_loss(s, 3, teacher, "kl_div").item() == pytest.approx(expected, rel=1e-5)
    assert local_group(torch.arange(12.0).view(2, 6), 3).tolist() == [[0, 1, 2], [9, 10, 11]]


def test_teacher_scores_replace_every_info_nce(scores):
    teacher = torch.tensor([[0.5, 0.3, 0.2], [0.6, 0.2, 0.2]])
    out = m3_loss(scores, 3, TAU, teacher_probs=teacher)
    inter = (scores["dense"] + 0.3 * scores["sparse"] + scores["colbert"]) / TAU
    parts = {m: m3_kd_loss(scores[m] / TAU, teacher, 3).item() for m in scores}
    expected = (
        parts["dense"] + m3_kd_loss(inter, teacher, 3).item() + 0.1 * parts["sparse"] + parts["colbert"]
    ) / 4
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)


def test_cross_device_dense_uses_gathered_scores_only_for_dense(scores):
    g = torch.Generator().manual_seed(3)
    dense_global = torch.rand(4, 12, generator=g)  # 2 processes x (2 queries, 6 passages)
    out = m3_loss(scores, 3, TAU, dense_global=dense_global)
    assert out.parts["dense"].item() == pytest.approx(nce(dense_global, 3), rel=1e-5)
    inter = scores["dense"] + 0.3 * scores["sparse"] + scores["colbert"]
    assert out.parts["inter"].item() == pytest.approx(nce(inter, 3), rel=1e-5)  # the ensemble stays local


def test_empty_scores_raise():
    with pytest.raises(ValueError, match="at least one of"):
        m3_loss({}, 3, TAU)
