"""Test-time compute: rewards, sandboxed execution and searches over completions.

``Decoder.search(prompt, strategy, reward)`` runs one search; every strategy grows the same
:class:`~decodekit.testtime.tree.Tree` (branches share their prefix's cache) and reports its
compute in the same :class:`~decodekit.testtime.tree.Compute` fields."""

from decodekit.testtime.adadec import AdaDec, Calibration, learn_threshold
from decodekit.testtime.astar import AStarDecoding
from decodekit.testtime.deal import DeAL
from decodekit.testtime.executable import ExecutableReward
from decodekit.testtime.mcts import MCTS
from decodekit.testtime.opera import OPERA
from decodekit.testtime.reward import ClassifierPRM, OutcomeReward, ProcessReward, Reward
from decodekit.testtime.sampled import BestOfN, FirstFinishSearch
from decodekit.testtime.sandbox import SandboxLimits, SandboxResult, run_tests
from decodekit.testtime.search import SEARCHES, Candidate, SearchResult
from decodekit.testtime.stepwise import DVTS, RewardBeamSearch
from decodekit.testtime.tree import Compute, Node, Tree

__all__ = [
    "AStarDecoding", "AdaDec", "BestOfN", "Calibration", "Candidate", "ClassifierPRM", "Compute", "DVTS", "DeAL", "ExecutableReward",
    "FirstFinishSearch", "MCTS", "Node", "OPERA", "OutcomeReward", "ProcessReward", "Reward", "RewardBeamSearch",
    "SEARCHES", "SandboxLimits", "SandboxResult", "SearchResult", "Tree", "learn_threshold", "run_tests",
]
