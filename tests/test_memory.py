"""A category's example memory (policy `memory:`): posts that closely resemble one of its
examples act as flagged, with no retraining; the decision names the example. The real
encoder and heads, through the worker's decide path."""

from __future__ import annotations

import re

import pytest

from service.classifier.scorer import PolicyScorer
from service.pipeline import Job, Moderator
from service.policy import PolicyError, parse_policy
from service.schemas import PostIn

WAVE = "兼职刷单，日结三百，加V信 abc12345 详聊"
REWORDED = "兼职刷单 日结300 加v信abc12345 详聊"
ORDINARY = "今天和朋友去公园散步，天气很好，晚上吃了火锅"


def _policy(memory: str = "", benign: str = "今天天气很好", threshold: float = 0.99):
    return parse_policy(_policy_yaml(memory, benign, threshold), source="memory.yaml")


def _policy_yaml(memory: str = "", benign: str = "今天天气很好", threshold: float = 0.99) -> str:
    # the threshold is out of the heads' reach: only the memory can make the rule fire
    return f"""\
name: memory-test
categories:
  scam_spam:
    description: scams and spam
    threshold: {threshold}
{memory}
benign_examples:
  zh: [{benign}, 我家的猫很可爱, 周末去爬山]
rules:
  - id: spam-review
    when: {{category: scam_spam}}
    action: review
"""


MEMORY = f"""\
    memory:
      similarity: 0.9
      examples:
        zh: ["{WAVE}"]
"""


def _decide(moderator: Moderator, lp, *texts: str):
    mod = Moderator(lp, PolicyScorer(moderator.encoder, lp.policy, moderator.heads))
    return mod.decide([Job(f"p{i}", PostIn(text=t)) for i, t in enumerate(texts)]), mod


def test_a_reworded_post_of_the_wave_is_recalled_and_acted_on(moderator):
    (wave, reworded, ordinary), mod = _decide(moderator, _policy(MEMORY), WAVE, REWORDED, ORDINARY)
    for d in (wave, reworded):
        assert d.action == "review", d
        assert d.memory["scam_spam"].example == WAVE
        assert 0.9 <= d.memory["scam_spam"].similarity <= 1.0001
        assert d.scores["scam_spam"] == 0.99  # raised to the threshold, no higher
        assert d.reasons[0].rule == "spam-review"
    assert wave.memory["scam_spam"].similarity >= reworded.memory["scam_spam"].similarity
    assert ordinary.action == "allow" and ordinary.memory is None
    assert ordinary.scores["scam_spam"] < 0.99
    assert mod.classifier.name.endswith("+memory")
    assert re.search(r"\.m[0-9a-f]{8}$", mod.classifier.version)

    # the same policy without the memory lets the wave through (the heads stay under 0.99)
    (plain,), plain_mod = _decide(moderator, _policy(), REWORDED)
    assert plain.action == "allow" and plain.memory is None
    assert not plain_mod.classifier.version.split(".")[-1].startswith("m")


def test_a_post_closer_to_a_benign_example_is_not_recalled(moderator):
    """The benign examples are the memory's counter-weight: here the reworded post itself is
    one, so it is nearer to it than to the wave's example."""
    (d,), _ = _decide(moderator, _policy(MEMORY, benign=REWORDED), REWORDED)
    assert d.action == "allow" and d.memory is None


def test_the_similarity_knob_and_the_version(moderator):
    strict = MEMORY.replace("similarity: 0.9", "similarity: 0.999")
    (d,), mod = _decide(moderator, _policy(strict), REWORDED)
    assert d.action == "allow" and d.memory is None
    (_,), loose = _decide(moderator, _policy(MEMORY), REWORDED)
    assert mod.classifier.version != loose.classifier.version  # the knob is in the version


def test_a_recalled_score_meets_the_thresholds_of_the_policy_that_judges(moderator):
    """Under a drift profile the same scorer serves a policy with other thresholds: the
    memory lifts a recalled post to the thresholds the post is judged by."""
    lp, profile = _policy(MEMORY), _policy(MEMORY, threshold=0.995)
    scorer = PolicyScorer(moderator.encoder, lp.policy, moderator.heads)
    emb = moderator.encoder.embed([REWORDED, ORDINARY])
    own, recalls = scorer.assess(emb, ["zh", "zh"])
    judged, _ = scorer.assess(emb, ["zh", "zh"], profile.policy)
    assert own[0]["scam_spam"] == 0.99 and judged[0]["scam_spam"] == 0.995
    assert own[1] == judged[1] and recalls[1] == {}
    assert scorer.score_embeddings(emb, ["zh", "zh"]) == own


@pytest.mark.parametrize(
    ("memory", "line", "fragment"),
    [
        ("    memory:\n      examples: {}\n", 7, "memory"),
        ("    memory:\n      similarity: 1.5\n      examples: {zh: [x]}\n", 7, "similarity"),
        ("    memory:\n      examples: {zh: []}\n", 7, "at least one example"),
        ("    memory:\n      example: {zh: [x]}\n", 7, "did you mean 'examples'"),
    ],
)
def test_a_bad_memory_is_refused_with_its_line(memory, line, fragment):
    with pytest.raises(PolicyError) as info:
        _policy(memory)
    errors = info.value.errors
    assert all(e.startswith(f"memory.yaml:{line}:") for e in errors), errors
    assert any(fragment in e and "categories.scam_spam.memory" in e for e in errors), errors


def _policy_file(tmp_path, memory: str, files: dict[str, str]):
    for rel, content in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(content, encoding="utf-8")
    (tmp_path / "policy.yaml").write_text(_policy_yaml(memory), encoding="utf-8")
    return tmp_path / "policy.yaml"


FILE_MEMORY = """\
    memory:
      similarity: 0.9
      examples:
        zh: [一条写在策略里的例子]
      files:
        zh: [waves/scam.txt]
"""


def test_memory_examples_can_live_in_files_beside_the_policy(moderator, tmp_path):
    """An operator drops a wave's posts into a file (one per line, # comments): they join
    the inline examples, the file is part of the policy's version and of what a watcher
    watches, and the wave is recalled as with inline examples."""
    from service.policy import load_policy
    from service.policy.parse import policy_files

    path = _policy_file(tmp_path, FILE_MEMORY, {"waves/scam.txt": f"# 12月刷单潮\n\n{WAVE}\n"})
    lp = load_policy(path)
    assert lp.policy.categories["scam_spam"].memory.examples == {"zh": ["一条写在策略里的例子", WAVE]}
    assert tmp_path / "waves" / "scam.txt" in policy_files(path)
    decisions, _ = _decide(moderator, lp, REWORDED, ORDINARY)
    assert decisions[0].action == "review" and decisions[0].memory["scam_spam"].example == WAVE
    assert decisions[1].action == "allow" and decisions[1].memory is None

    (tmp_path / "waves" / "scam.txt").write_text(f"{WAVE}\n另一条刷单广告，加V详聊\n", encoding="utf-8")
    assert load_policy(path).version != lp.version


@pytest.mark.parametrize(
    ("files", "content", "fragment"),
    [
        ("../scam.txt", None, "include paths stay beside the policy"),
        ("waves/missing.txt", None, "cannot read 'waves/missing.txt'"),
        ("waves/scam.txt", "# only a comment\n\n", "hold no example"),
    ],
)
def test_a_bad_memory_file_is_refused_with_its_line(tmp_path, files, content, fragment):
    from service.policy import load_policy

    memory = f"    memory:\n      files:\n        zh: [{files}]\n"
    extra = {"waves/scam.txt": content} if content is not None else {}
    path = _policy_file(tmp_path, memory, extra)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    errors = info.value.errors
    assert any(fragment in e and "categories.scam_spam.memory.files" in e for e in errors), errors
    assert all(e.startswith(f"{path}:") for e in errors), errors


def test_memory_files_need_a_policy_loaded_from_a_file():
    with pytest.raises(PolicyError, match="includes need a policy loaded from a file"):
        _policy("    memory:\n      files:\n        zh: [waves/scam.txt]\n")
