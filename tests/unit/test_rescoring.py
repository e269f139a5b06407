"""In-beam re-scoring with an external scorer (RankGen-style) on a scripted model, by hand."""

from __future__ import annotations

import math

import pytest

from decodekit.api import Decoder
from decodekit.errors import ConfigError, InputError
from decodekit.model.scripted import ScriptedModel
from decodekit.scoring.rerank import Rescoring
from decodekit.search.beam import BeamSearch

EOS = 0


def model() -> ScriptedModel:
    """After the prompt: 2 (.5), 3 (.3), 4 (.2); after any of them, EOS."""

    def next_logprobs(sequence):
        probs = {2: 0.5, 3: 0.3, 4: 0.2} if len(sequence) == 1 else {EOS: 1.0}
        return [math.log(probs[i]) if i in probs else -math.inf for i in range(5)]

    return ScriptedModel(5, next_logprobs, eos_token_ids=(EOS,))


def likes_four(prompt, ids) -> float:
    assert prompt == [1]  # no tokenizer: the scorer sees token ids
    return 1.0 if 4 in ids else 0.0


def run(rescore):
    decoder = Decoder(model())
    config = BeamSearch(num_beams=2, num_return_sequences=2, length_penalty=0.0, rescore=rescore)
    return [(s.token_ids, s.score) for s in decoder.generate([1], config, max_new_tokens=3).sequences]


def test_rescoring_keeps_the_beam_the_scorer_likes():
    assert [ids for ids, _ in run(None)] == [[2, EOS], [3, EOS]]  # 4 (p .2) is pruned
    # every step: ranks .5 log p + .5 s: 2 -> -.347, 3 -> -.602, 4 -> .5 log .2 + .5 = -.305
    got = run(Rescoring(likes_four, every=1, weight=0.5))
    assert [ids for ids, _ in got] == [[4, EOS], [2, EOS]]
    assert [score for _, score in got] == pytest.approx([0.5 * math.log(0.2) + 0.5, 0.5 * math.log(0.5)], abs=1e-5)


def test_between_rescorings_the_beams_follow_their_logprobs():
    # every 2 steps: step 0 is not re-scored, so 4 is pruned; the finished ones are scored
    got = run(Rescoring(likes_four, every=2, weight=0.5))
    assert [ids for ids, _ in got] == [[2, EOS], [3, EOS]]
    assert [score for _, score in got] == pytest.approx([0.5 * math.log(0.5), 0.5 * math.log(0.3)], abs=1e-5)


def test_weight_zero_is_plain_beam_search():
    rescored, plain = run(Rescoring(likes_four, every=1, weight=0.0)), run(None)
    assert [ids for ids, _ in rescored] == [ids for ids, _ in plain]
    assert [score for _, score in rescored] == pytest.approx([score for _, score in plain])


def test_the_scorer_sees_each_candidate_once_per_rescoring():
    calls = []

    class Counting:
        def score(self, prompt, texts):
            calls.append(len(texts))
            return [0.0] * len(texts)

    run(Rescoring(Counting(), every=1, weight=0.5))
    assert calls == [3, 2]  # step 0: the 3 possible tokens; step 1: the 2 finishing beams


@pytest.mark.parametrize(
    ("rescore", "field"),
    [(Rescoring(5), "scorer"), (Rescoring(likes_four, every=0), "rescore.every"), (Rescoring(likes_four, weight=1.5), "rescore.weight"), ("x", "rescore")],
)
def test_bad_rescoring_settings_name_their_field(rescore, field):
    with pytest.raises(ConfigError) as error:
        BeamSearch(rescore=rescore).validate()
    assert error.value.field == field


def test_never_is_refused_with_rescoring():
    with pytest.raises(ConfigError) as error:
        BeamSearch(rescore=Rescoring(likes_four), early_stopping="never").validate()
    assert error.value.field == "early_stopping"


def test_a_scorer_returning_no_number_is_named():
    with pytest.raises(InputError, match="rescore.scorer"):
        run(Rescoring(lambda prompt, ids: float("nan"), every=1))
