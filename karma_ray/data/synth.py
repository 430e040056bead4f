"""Synthetic Reddit corpus in real Pushshift format, with a planted, documented text/score relationship.

Why: every later stage (readers, thread reconstruction, filtering, pair building, reward models) needs a
corpus whose ground truth is known. Real dumps cannot say whether a reward model learned *text* or merely
*metadata*; this one can, because the score is an explicit function of separable components.

Output (``write_synthetic_corpus``)
-----------------------------------
``output_dir/RC_YYYY-MM.zst`` and ``RS_YYYY-MM.zst`` starting at 2015-01, one JSON object per line, UTF-8,
zstd streamed with ``window_log=31`` (a 2 GiB window, like the real dumps: a default
``zstandard.ZstdDecompressor()`` refuses them; use ``max_window_size=2**31``). Each comment lies in the file
of the month of its ``created_utc``; threads started late in a month continue in the next month's file.
``synth_summary.json`` holds ``SynthSummary.to_dict()`` plus a ``planted`` section (formula, constants,
vocabularies, subreddit offsets) and a ``ground_truth`` section (threads, missing submissions, ...).

Planted signal
--------------
Every thread (one submission) has a topic from ``TOPICS`` (8 topics x 20 words), independent of the
subreddit, and a keyword: one of its topic's words. Each new thread takes the topic with the fewest comments
so far, and inside it the keyword with the fewest comments so far, so the comment-weighted topic and keyword
mixes stay uniform. Titles and selftexts use the thread's topic words, the keyword always among them. A
comment body is neutral filler (``FILLER_WORDS``; shares no token with any topic or marker) plus 2-4 words of
ONE topic: the thread's topic with probability ``P_ON_TOPIC`` (on-topic), otherwise one of the 7 other topics
uniformly (off-topic). An on-topic body always contains the thread's keyword, as real replies echo the words
of the post they answer; an off-topic body contains a uniformly drawn word of its own topic in the same place.
Because both mixes are uniform, P(on-topic | reply text) = P_ON_TOPIC for every reply: the on-topic effect is
only learnable by a model that sees the context (title / parent), never from the reply alone. A small model
can learn it by matching the keyword token between title and reply; a pretrained one also by word meaning.

A context-independent component: with probability ``P_MARKER_GOOD`` a body carries exactly one phrase of
``MARKERS_GOOD`` (marker_score = +1), with ``P_MARKER_BAD`` exactly one of ``MARKERS_BAD`` (-1), else none (0).
``marker_score(body)`` recovers it (case-insensitive substring test).

A metadata component the text cannot reveal: ``early_bonus = exp(-delay / TAU_EARLY_SECONDS)`` where
``delay = created_utc - created_utc(parent)`` (the parent is the submission for top-level comments), and a
per-subreddit offset ``subreddit_offsets(subreddits)`` (evenly spaced in
[-SUBREDDIT_OFFSET_SPAN, +SUBREDDIT_OFFSET_SPAN] in the order the subreddits are given).

    latent = LATENT_BIAS + W_TOPIC*on_topic + W_MARKER*marker_score + W_EARLY*early_bonus
             + subreddit_offset + noise
    noise  = NOISE_SIGMA*N(0,1) + VIRAL_SCALE*(Exp(1) - 1)          (the exponential part makes the tail heavy)
    score  = 1 + floor(expm1(K_POS*latent))      if latent >= 0
           = 1 - floor(expm1(K_NEG*(-latent)))   otherwise            (monotone in latent; see score_from_latent)

Constants: P_ON_TOPIC=0.6, P_MARKER_GOOD=0.15, P_MARKER_BAD=0.10, W_TOPIC=0.9, W_MARKER=0.6, W_EARLY=1.1,
TAU_EARLY_SECONDS=3600, LATENT_BIAS=-0.5, NOISE_SIGMA=0.7, VIRAL_SCALE=0.35, K_POS=1.5, K_NEG=0.8,
SUBREDDIT_OFFSET_SPAN=0.4. Reply delays are 30 s + Exp(mean 2400 s) (75 %) or Exp(mean 6 h) (25 %).
On clean comments this gives Spearman(score, on_topic) ~ 0.4, Spearman(score, early_bonus) ~ 0.3,
Spearman(score, marker_score) ~ 0.27, median score 2, ~8 % scores <= 0, max in the thousands at 1M comments.
Latent components are stored nowhere in the files; ``planted_components`` recomputes the noise-free part from
a record, its parent's ``created_utc`` and the thread topic (``topic_of_text(title)``). The formula holds
exactly for clean comments; deleted/removed/moderator/empty/overlong comments score as their hidden text
would, bots and unsettled comments score ~1.

Threads
-------
One submission each; sizes heavy-tailed (1 + lognormal(2.3, 1.25), capped at min(3000, n_comments/100));
25-60 % top-level comments, other replies go to a uniformly chosen earlier comment (depth ~ log n), and ~10 %
of threads are back-and-forth arguments (depth >= 8 common). OP replies in ~40 % of threads
(``is_submitter``); children of deleted/removed comments are kept. Authors come from a skewed pool.
``num_comments`` is the thread's planned size (the dump may hold fewer, as real dumps do).

Quirks and drop categories (counted in ``SynthSummary``)
-------------------------------------------------------
Every comment line falls in exactly one category, tested in this precedence (the generator makes them
disjoint, so the order does not change the counts):
malformed (not UTF-8 / not JSON / not an object) > duplicate (``id`` seen on an earlier line, files in month
order) > deleted (body ``[deleted]``) > removed (body ``[removed]``) > bot (author in ``BOT_AUTHORS``) >
moderator (``distinguished == "moderator"`` or ``stickied``) > empty (body blank) > overlong
(``len(body) > OVERLONG_CHARS``) > unsettled (``retrieved_on - created_utc < UNSETTLED_SECONDS``) > clean.
Quirks that are not drops, counted over well-formed non-duplicate lines: ``created_utc`` as a JSON string,
missing ``name``, dangling ``parent_id`` (``t1_`` id of a comment that appears nowhere). Duplicates are only
ever made of clean, quirk-free comments. Malformed lines are extra lines (never a comment that anything
replies to); the invalid-UTF-8 ones also carry a stray byte between fields, so they stay invalid JSON even
for a reader that decodes with ``errors="replace"``. About 2 % of submissions are absent from the RS files.

Performance and memory: generation is streamed (threads in time order, month by month, in vectorized batches;
compression runs in a helper thread). Comments that spill into a later month are buffered (a few % of a
month). A zstd compressor with a 2 GiB window keeps the uncompressed data of the file being written resident,
so peak RSS is about one month's uncompressed RC size plus ~0.1 GB: measured 0.40 GB at both 1M and 4M
comments (default 500k comments/month), ~110-125k comments/s on 2 vCPUs, ~70 bytes/comment compressed.
Determinism: same arguments -> byte-identical data files (numpy PCG64 seeded from ``seed``; no hash()).
"""

from __future__ import annotations

import bisect
import calendar
import functools
import itertools
import math
import re
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import zstandard

# --------------------------------------------------------------------------------------------------
# Public constants
# --------------------------------------------------------------------------------------------------

OVERLONG_CHARS = 6000
UNSETTLED_SECONDS = 3600
START_YEAR = 2015
START_MONTH = 1
COMMENTS_PER_MONTH = 500_000  # default month count: one month per this many comments (at least 2)
ZSTD_WINDOW_LOG = 31

TOPICS: dict[str, tuple[str, ...]] = {
    "cooking": ("garlic", "skillet", "simmer", "oregano", "marinade", "saute", "broth", "whisk", "braise",
                "paprika", "dough", "ferment", "sourdough", "basil", "roast", "cumin", "ladle", "brine",
                "zest", "glaze"),
    "space": ("orbit", "nebula", "telescope", "galaxy", "asteroid", "comet", "rocket", "lunar", "quasar",
              "gravity", "eclipse", "cosmic", "satellite", "astronaut", "meteor", "pulsar", "spacecraft",
              "supernova", "exoplanet", "starlight"),
    "finance": ("mortgage", "dividend", "portfolio", "inflation", "budget", "equity", "interest", "savings",
                "retirement", "index", "broker", "liquidity", "bond", "tax", "pension", "credit", "debt",
                "expense", "annuity", "ledger"),
    "gaming": ("controller", "respawn", "speedrun", "console", "multiplayer", "quest", "boss", "loot",
               "checkpoint", "joystick", "arcade", "raid", "dungeon", "pixel", "shader", "hitbox", "lag",
               "patch", "leaderboard", "savegame"),
    "gardening": ("tomato", "compost", "mulch", "seedling", "trellis", "pruning", "perennial", "fertilizer",
                  "soil", "greenhouse", "aphid", "weeding", "shovel", "tulip", "orchard", "sprout", "hedge",
                  "irrigation", "bulb", "harvest"),
    "programming": ("compiler", "pointer", "recursion", "refactor", "debugger", "syntax", "runtime", "lambda",
                    "iterator", "mutex", "bytecode", "linter", "regex", "stacktrace", "closure", "segfault",
                    "kernel", "python", "rust", "deploy"),
    "music": ("guitar", "chord", "melody", "tempo", "drummer", "bassline", "synth", "vinyl", "chorus",
              "acoustic", "tuning", "riff", "harmony", "octave", "falsetto", "setlist", "amplifier",
              "metronome", "orchestra", "lyric"),
    "fitness": ("squat", "deadlift", "protein", "cardio", "treadmill", "stretching", "bench", "kettlebell",
                "sprint", "marathon", "dumbbell", "calorie", "hydration", "warmup", "plank", "rowing",
                "biceps", "stamina", "recovery", "yoga"),
}
TOPIC_NAMES: tuple[str, ...] = tuple(TOPICS)

# Neutral words: no topic word, no marker token. A few non-ASCII ones so multi-byte UTF-8 characters
# (including 4-byte emoji) land on reader chunk boundaries.
FILLER_WORDS: tuple[str, ...] = (
    "the", "a", "i", "think", "it", "is", "was", "really", "just", "but", "and", "that", "so", "you",
    "they", "we", "not", "pretty", "kind", "of", "actually", "maybe", "probably", "people", "thing", "way",
    "time", "about", "with", "on", "at", "like", "some", "more", "much", "still", "even", "if", "when",
    "there", "would", "could", "should", "have", "had", "been", "get", "got", "know", "see", "said", "one",
    "other", "what", "which", "because", "also", "though", "anyway", "usually", "sometimes", "never",
    "always", "here", "same", "lot", "bit", "whole", "stuff", "guess", "mean", "point", "agree", "idea",
    "café", "naïve", "déjà", "vu", "—", "…", "😂", "🙂", "👍",
)

# Context-independent quality markers. Each phrase contains a token that no filler/topic word contains,
# so a phrase can only appear in a body where the generator put it (checked at import).
MARKERS_GOOD: tuple[str, ...] = ("source:", "in my experience", "for example", "to be fair", "thanks for")
MARKERS_BAD: tuple[str, ...] = ("first!", "this.", "lol", "/s", "who cares")

BOT_AUTHORS: tuple[str, ...] = ("AutoModerator", "RemindMeBot", "WikiTextBot", "sneakpeekbot", "converter-bot")

DEFAULT_SUBREDDITS: tuple[str, ...] = ("AskReddit", "worldnews", "gaming", "science", "books",
                                       "personalfinance", "Cooking", "programming")

# Planted-signal constants (see module docstring).
P_ON_TOPIC = 0.6
P_MARKER_GOOD = 0.15
P_MARKER_BAD = 0.10
W_TOPIC = 0.9
W_MARKER = 0.6
W_EARLY = 1.1
TAU_EARLY_SECONDS = 3600.0
LATENT_BIAS = -0.5
NOISE_SIGMA = 0.7
VIRAL_SCALE = 0.35
K_POS = 1.5
K_NEG = 0.8
SUBREDDIT_OFFSET_SPAN = 0.4
SCORE_CAP = 1_000_000

# Reply-delay mixture (seconds): min + Exp(fast mean) with prob P_FAST_REPLY, else min + Exp(slow mean).
MIN_REPLY_DELAY = 30
FAST_REPLY_MEAN = 2400.0
SLOW_REPLY_MEAN = 6 * 3600.0
P_FAST_REPLY = 0.75

# Drop-category rates per comment (disjoint; the rest is clean).
RATE_DELETED = 0.03
RATE_REMOVED = 0.015
RATE_BOT = 0.01
RATE_MODERATOR = 0.005
RATE_EMPTY = 0.004
RATE_OVERLONG = 0.002
RATE_UNSETTLED = 0.02
# Extra lines and quirks.
RATE_MALFORMED = 0.001  # a malformed line is inserted after a comment with this probability
RATE_DUPLICATE = 0.002  # a clean quirk-free comment is re-emitted with this probability
RATE_DANGLING = 0.003
RATE_STRING_CREATED = 0.05
RATE_MISSING_NAME = 0.03
RATE_EDITED = 0.04
RATE_MISSING_SUBMISSION = 0.02
RATE_ZERO_COMMENT_SUBMISSION = 0.25  # extra RS rows with no comments, per thread

# --------------------------------------------------------------------------------------------------
# Public dataclass and pure helpers
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthSummary:
    """Ground-truth counts for a generated corpus (see the module docstring for exact definitions)."""

    comments_written: int
    submissions_written: int
    files: tuple[str, ...]
    malformed_lines: int
    invalid_utf8_lines: int
    deleted_bodies: int
    removed_bodies: int
    bot_comments: int
    moderator_comments: int
    empty_bodies: int
    overlong_bodies: int
    unsettled_scores: int
    duplicate_lines: int
    dangling_parents: int
    string_created_utc: int
    missing_name: int
    clean_comments: int
    seed: int

    def to_dict(self) -> dict:
        return {**asdict(self), "files": list(self.files)}


_WORD_RE = re.compile(r"[a-z]+")
_WORD_TO_TOPIC: dict[str, str] = {w: t for t, words in TOPICS.items() for w in words}


def topic_of_text(text: str) -> str | None:
    """The topic whose words occur most often in ``text`` (None if no topic word; ties -> first topic)."""
    counts = Counter(_WORD_TO_TOPIC[w] for w in _WORD_RE.findall(text.lower()) if w in _WORD_TO_TOPIC)
    if not counts:
        return None
    return max(TOPIC_NAMES, key=lambda t: counts[t])


def marker_score(text: str) -> int:
    """(# MARKERS_GOOD phrases present) - (# MARKERS_BAD phrases present), case-insensitive."""
    lower = text.lower()
    return sum(p in lower for p in MARKERS_GOOD) - sum(p in lower for p in MARKERS_BAD)


def gold_text_quality(context: str, reply: str) -> float | None:
    """The noise-free TEXT part of the planted latent for a reply to a rendered context:
    W_TOPIC * on_topic + W_MARKER * marker_score(reply), where on_topic says whether the reply's topic
    is the submission title's (the context's "[title] ..." line). This is the gold reward of a
    generated reply: timing, subreddit and noise are not the reply's doing. None when the context
    shows no title with a topic word (a cut context, or a corpus that is not synthetic)."""
    first = context.split("\n", 1)[0]
    if not first.startswith("[title] "):
        return None
    title_topic = topic_of_text(first[len("[title] "):])
    if title_topic is None:
        return None
    on_topic = int(topic_of_text(reply) == title_topic)  # a reply with no topic word is off topic
    return W_TOPIC * on_topic + W_MARKER * marker_score(reply)


def corpus_is_synthetic(corpus: str | Path) -> bool:
    """True when every input of the prepared corpus CORPUS sits in a folder written by `karma synth`
    (where gold_text_quality is the planted truth)."""
    manifest = orjson.loads((Path(corpus) / "manifest.json").read_bytes())
    inputs = [Path(i["path"]) for i in manifest.get("inputs", [])]
    return bool(inputs) and all((p.parent / "synth_summary.json").is_file() or (p / "synth_summary.json").is_file() for p in inputs)


def early_bonus(delay_seconds: float) -> float:
    """exp(-delay / TAU_EARLY_SECONDS): 1 for an instant reply, ~0.37 after one hour."""
    return math.exp(-max(delay_seconds, 0.0) / TAU_EARLY_SECONDS)


def subreddit_offsets(subreddits: Sequence[str] | None = None) -> dict[str, float]:
    """Per-subreddit latent offsets: evenly spaced in [-SPAN, +SPAN] in the given order (0 for a single one)."""
    subs = tuple(subreddits) if subreddits else DEFAULT_SUBREDDITS
    if len(subs) == 1:
        return {subs[0]: 0.0}
    values = np.linspace(-SUBREDDIT_OFFSET_SPAN, SUBREDDIT_OFFSET_SPAN, len(subs))
    return {s: round(float(v), 6) for s, v in zip(subs, values)}


def score_from_latent(latent: float) -> int:
    """The planted monotone map latent -> integer score (heavy upper tail, mild negatives)."""
    if latent >= 0:
        return int(min(1 + math.floor(math.expm1(K_POS * latent)), SCORE_CAP))
    return int(max(1 - math.floor(math.expm1(K_NEG * -latent)), -SCORE_CAP))


def _scores_from_latent(latent: np.ndarray) -> np.ndarray:
    """Vectorized score_from_latent (identical results)."""
    pos = 1 + np.floor(np.expm1(K_POS * np.maximum(latent, 0.0)))
    neg = 1 - np.floor(np.expm1(K_NEG * np.maximum(-latent, 0.0)))
    return np.clip(np.where(latent >= 0, pos, neg), -SCORE_CAP, SCORE_CAP).astype(np.int64)


def planted_components(record: Mapping[str, Any], parent_created_utc: int | str, submission_topic: str,
                       subreddits: Sequence[str] | None = None) -> dict[str, Any]:
    """Recompute the noise-free planted components of a well-formed comment.

    ``parent_created_utc`` is the submission's created_utc for a top-level comment, else the parent comment's;
    ``submission_topic`` is ``topic_of_text(submission title)``; ``subreddits`` as passed to the generator.
    Returns topic (of the body), on_topic (0/1, None when the body has no topic word, e.g. [deleted]),
    marker_score, delay_seconds, early_bonus, subreddit_offset and latent_mean (latent minus noise; None when
    on_topic is None). The observed score is score_from_latent(latent_mean + noise).
    """
    body = str(record.get("body", ""))
    topic = topic_of_text(body)
    on_topic = None if topic is None else int(topic == submission_topic)
    markers = marker_score(body)
    delay = int(record["created_utc"]) - int(parent_created_utc)
    bonus = early_bonus(delay)
    offset = subreddit_offsets(subreddits).get(str(record.get("subreddit")), 0.0)
    latent_mean = None
    if on_topic is not None:
        latent_mean = LATENT_BIAS + W_TOPIC * on_topic + W_MARKER * markers + W_EARLY * bonus + offset
    return {"topic": topic, "on_topic": on_topic, "marker_score": markers, "delay_seconds": delay,
            "early_bonus": bonus, "subreddit_offset": offset, "latent_mean": latent_mean}


def planted_description(subreddits: Sequence[str] | None = None) -> dict[str, Any]:
    """The 'planted' section of synth_summary.json: formula, constants and vocabularies."""
    return {
        "formula": ("latent = LATENT_BIAS + W_TOPIC*on_topic + W_MARKER*marker_score "
                    "+ W_EARLY*exp(-delay/TAU_EARLY_SECONDS) + subreddit_offset + noise; "
                    "noise = NOISE_SIGMA*N(0,1) + VIRAL_SCALE*(Exp(1)-1); "
                    "score = 1+floor(expm1(K_POS*latent)) if latent>=0 else 1-floor(expm1(K_NEG*-latent))"),
        "definitions": {
            "on_topic": "1 if the body's topic words belong to the thread topic (topic_of_text(title)), else 0",
            "marker_score": "#MARKERS_GOOD phrases - #MARKERS_BAD phrases in lower(body); one at most per comment",
            "delay": "created_utc - created_utc(parent); parent = submission for top-level comments",
            "subreddit_offset": "evenly spaced in [-SUBREDDIT_OFFSET_SPAN, +SPAN] in subreddit order",
            "applies_to": "clean comments exactly; deleted/removed/moderator/empty/overlong comments score as "
                          "their hidden (never written) text would; bots and unsettled comments score ~1",
            "thread_topic": "independent of the subreddit; each new thread gets the topic with the fewest "
                            "comments so far (ties random), so P(on_topic | reply's own topic) = P_ON_TOPIC",
            "thread_keyword": "one word of the thread topic, always in the title; chosen like the topic "
                              "(fewest comments so far inside the topic); every on-topic body contains it",
            "body": "a pre-rendered head (neutral filler + 2-4 words of one topic, one of them the keyword) + a "
                    "neutral tail; clean bodies carry words of exactly one topic and at most one marker phrase",
        },
        "constants": {
            "P_ON_TOPIC": P_ON_TOPIC, "P_MARKER_GOOD": P_MARKER_GOOD, "P_MARKER_BAD": P_MARKER_BAD,
            "W_TOPIC": W_TOPIC, "W_MARKER": W_MARKER, "W_EARLY": W_EARLY, "TAU_EARLY_SECONDS": TAU_EARLY_SECONDS,
            "LATENT_BIAS": LATENT_BIAS, "NOISE_SIGMA": NOISE_SIGMA, "VIRAL_SCALE": VIRAL_SCALE, "K_POS": K_POS,
            "K_NEG": K_NEG, "SUBREDDIT_OFFSET_SPAN": SUBREDDIT_OFFSET_SPAN, "SCORE_CAP": SCORE_CAP,
            "MIN_REPLY_DELAY": MIN_REPLY_DELAY, "FAST_REPLY_MEAN": FAST_REPLY_MEAN,
            "SLOW_REPLY_MEAN": SLOW_REPLY_MEAN, "P_FAST_REPLY": P_FAST_REPLY,
            "OVERLONG_CHARS": OVERLONG_CHARS, "UNSETTLED_SECONDS": UNSETTLED_SECONDS,
        },
        "rates": {
            "deleted": RATE_DELETED, "removed": RATE_REMOVED, "bot": RATE_BOT, "moderator": RATE_MODERATOR,
            "empty": RATE_EMPTY, "overlong": RATE_OVERLONG, "unsettled": RATE_UNSETTLED,
            "malformed": RATE_MALFORMED, "duplicate": RATE_DUPLICATE, "dangling": RATE_DANGLING,
            "string_created_utc": RATE_STRING_CREATED, "missing_name": RATE_MISSING_NAME,
            "edited": RATE_EDITED, "missing_submission": RATE_MISSING_SUBMISSION,
        },
        "topics": {t: list(w) for t, w in TOPICS.items()},
        "markers_good": list(MARKERS_GOOD),
        "markers_bad": list(MARKERS_BAD),
        "bot_authors": list(BOT_AUTHORS),
        "subreddit_offsets": subreddit_offsets(subreddits),
    }


# --------------------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------------------

_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_COMMENT_ID_BASE = int("cn00000", 36)  # early-2015 comment ids look like 'cn4x2ab'
_SUBMISSION_ID_BASE = int("2r0000", 36)  # early-2015 submission ids look like '2r1abc'
_N_SNIPPETS = 4096  # neutral filler snippets (2-9 words)
_WORDS_PER_TOPIC = 20
_HEADS_PER_KEYWORD = 256  # pre-rendered topical sentences per (topic, keyword): 1-3 snippets + 2-4 topic words
_N_HEADS_PER_TOPIC = _WORDS_PER_TOPIC * _HEADS_PER_KEYWORD
_N_TAILS = 8192  # pre-rendered neutral continuations (40 % empty); body = head + tail
_ROW_BLOCK = 16384  # comment ids are made this many at a time
_BATCH_COMMENTS = 4096  # threads are planned and vectorized in batches of about this many comments
_UNIFORM_BLOCK = 65536
_FLUSH_LINES = 4096
_MAX_THREAD_COMMENTS = 3000

_ADJECTIVES = ("quiet", "happy", "angry", "lazy", "brave", "sleepy", "clever", "grumpy", "lucky", "salty",
               "fuzzy", "rusty", "silent", "crispy", "wild", "gentle", "bold", "shy", "cosmic", "tiny",
               "giant", "mellow", "spicy", "frozen")
_NOUNS = ("falcon", "potato", "wizard", "otter", "panda", "badger", "pickle", "walrus", "toaster", "llama",
          "goblin", "cactus", "penguin", "moose", "ferret", "narwhal", "waffle", "raccoon", "hamster", "viking",
          "noodle", "pigeon", "turtle", "bagel")
_TITLE_STARTS = ("What do you think about", "Anyone else struggling with", "TIL about", "Question about",
                 "Need help with", "Discussion:", "Opinions on", "Is it worth learning", "ELI5:",
                 "Unpopular opinion:")
_LINK_DOMAINS = ("i.imgur.com", "youtube.com", "en.wikipedia.org", "nytimes.com", "github.com")
_BOT_BODIES = {
    "AutoModerator": "Your post has been received. Please read the rules in the sidebar before commenting. "
                     "*I am a bot, and this action was performed automatically. Please contact the moderators "
                     "of this subreddit if you have any questions or concerns.*",
    "RemindMeBot": "I will be messaging you in 2 days on 2015-01-10 12:00:00 UTC to remind you of this link.",
    "WikiTextBot": "**Overview**\n\nA short summary from Wikipedia.\n\n^[ PM | Exclude me | FAQ ] ^Downvote to "
                   "remove",
    "sneakpeekbot": "Here's a sneak peek of /r/SubredditSimulator using the top posts of all time!",
    "converter-bot": "5 miles is 8.05 km",
}
_MOD_BODIES = ("Please keep the discussion civil. Personal attacks will be removed.",
               "Reminder: rule 3 applies here. Low effort comments will be removed.",
               "Locking this thread because it has run its course.",
               "Megathread for related discussion is linked in the sidebar.")
_GARBAGE_LINES = (b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
                  b"null",
                  b"Traceback (most recent call last): MemoryError",
                  b"}{\"broken\"",
                  b"\"[deleted]\"")
_EMPTY_BODIES = ("", " ", "\n\n", "   \t ")
# category codes = index of the interval that np.searchsorted(_CAT_THRESHOLDS, u, "right") returns
_CAT_DELETED, _CAT_REMOVED, _CAT_BOT, _CAT_MOD, _CAT_EMPTY, _CAT_OVERLONG, _CAT_UNSETTLED, _CAT_CLEAN = range(8)
_CAT_THRESHOLDS = np.cumsum([RATE_DELETED, RATE_REMOVED, RATE_BOT, RATE_MODERATOR, RATE_EMPTY, RATE_OVERLONG,
                             RATE_UNSETTLED])
# rare per-comment events, packed in one int so the common path tests a single value
_FLAG_STRING_CREATED, _FLAG_NO_NAME, _FLAG_DANGLING, _FLAG_DUPLICATE, _FLAG_MALFORMED, _FLAG_EDITED = (
    1, 2, 4, 8, 16, 32)


def _base36_block(start: int, count: int, width: int) -> list[str]:
    """base36 of start..start+count-1, all exactly `width` digits (vectorized: ids are a hot path)."""
    values = start + np.arange(count, dtype=np.int64)
    powers = 36 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    digits = (values[:, None] // powers) % 36
    lut = np.frombuffer(_B36.encode(), dtype=np.uint8)
    text = lut[digits].tobytes().decode("ascii")
    return [text[i:i + width] for i in range(0, count * width, width)]


def _year_month(month_index: int) -> tuple[int, int]:
    """(year, month) of the month_index-th month after START_YEAR-START_MONTH (0 -> (2015, 1))."""
    total = START_YEAR * 12 + (START_MONTH - 1) + month_index
    return total // 12, total % 12 + 1


def _check_vocabulary() -> None:
    """Keep the planted signal recoverable: markers and topics must never arise from filler by accident."""
    filler = set(FILLER_WORDS)
    topic_words = set(_WORD_TO_TOPIC)
    if any(len(words) != _WORDS_PER_TOPIC for words in TOPICS.values()):
        raise RuntimeError(f"every topic needs exactly {_WORDS_PER_TOPIC} words (keywords index them)")
    if len(topic_words) != sum(len(w) for w in TOPICS.values()):
        raise RuntimeError("topic vocabularies overlap")
    if filler & topic_words:
        raise RuntimeError("filler shares words with topics")
    vocab = filler | topic_words
    for phrase in MARKERS_GOOD + MARKERS_BAD:
        # Some piece of the phrase (a word, or a symbol such as "/") occurs in no vocabulary word, not even
        # as a substring. Templates only add ". , \n\n" and the DOI url of "source:" (which has no "/s").
        pieces = _WORD_RE.findall(phrase) + [ch for ch in phrase if not ch.isalnum() and ch not in " .,:!"]
        if not any(all(piece not in w for w in vocab) for piece in pieces):
            raise RuntimeError(f"marker {phrase!r} could arise from filler")
        if any(w in _WORD_TO_TOPIC for w in _WORD_RE.findall(phrase)):
            raise RuntimeError(f"marker {phrase!r} contains a topic word")


_check_vocabulary()
# author names are written into JSON without escaping (see _emit_threads): keep them plain
if not all(re.fullmatch(r"[A-Za-z0-9_\-\[\]]+", a) for a in BOT_AUTHORS + ("[deleted]",) + _ADJECTIVES + _NOUNS):
    raise RuntimeError("author names must not need JSON escaping")


def _drawn_in_blocks(draw: Callable[[], np.ndarray]) -> Iterator[float]:
    """The values of draw(), block after block; the next block is drawn only when one is needed."""
    while True:
        yield from draw().tolist()


class _RandomStream:
    """Scalar uniforms/normals served from pre-drawn numpy blocks (a numpy call per scalar costs ~2 us)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._uniforms = _drawn_in_blocks(functools.partial(rng.random, _UNIFORM_BLOCK))
        self._normals = _drawn_in_blocks(functools.partial(rng.standard_normal, _UNIFORM_BLOCK // 4))

    def uniform(self) -> float:
        return next(self._uniforms)

    def integer(self, n: int) -> int:
        return int(self.uniform() * n)

    def normal(self) -> float:
        return next(self._normals)


@dataclass
class _ThreadPlan:
    """Thread-level draws for one batch of threads (parallel lists, one entry per thread)."""

    sizes: list[int]
    topics: list[int]
    keywords: list[int]  # index of the thread's keyword in TOPICS[topic]
    subs: list[int]
    op_idx: list[int]  # OP's index in the author pool
    p_top: list[float]  # probability that a comment (after the first) is top level
    p_chain: list[float]  # probability that a reply answers the previous comment (argument threads)
    p_op_reply: list[float]  # probability that a reply is written by OP
    missing: list[bool]  # submission absent from the RS files
    t_sub: list[int]


class _CompressionThread:
    """Runs zstd compression and file writes beside the generator (zstandard releases the GIL while it
    compresses, so on a multi-core machine compression mostly overlaps generation). At most a few batches
    of lines are in flight, so memory stays flat; a failed write raises in the generator thread, from a
    later submit() or from finish()."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="synth-zstd")
        self._in_flight: deque[Future] = deque()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        if len(self._in_flight) >= 4:
            self._in_flight.popleft().result()
        self._in_flight.append(self._pool.submit(fn, *args))

    def finish(self) -> None:
        try:
            while self._in_flight:
                self._in_flight.popleft().result()
        finally:
            self._pool.shutdown()


class _MonthSink:
    """One month's RC and RS zstd streams (2 GiB window), fed in batches of lines."""

    def __init__(self, output_dir: Path, month_index: int, worker: _CompressionThread) -> None:
        self._worker = worker
        year, month = _year_month(month_index)
        self.rc_path = output_dir / f"RC_{year:04d}-{month:02d}.zst"
        self.rs_path = output_dir / f"RS_{year:04d}-{month:02d}.zst"
        self._rc = self._open(self.rc_path)
        self._rs = self._open(self.rs_path)
        self.rc_lines: list[bytes] = []
        self.rs_lines: list[bytes] = []

    @staticmethod
    def _open(path: Path) -> Any:
        params = zstandard.ZstdCompressionParameters.from_level(3, window_log=ZSTD_WINDOW_LOG)
        # Size unknown -> the frame header declares the full 2 GiB window, like the real dumps. (A pledged
        # size would let zstd shrink the window and default decoders would accept the file.)
        return zstandard.ZstdCompressor(compression_params=params).stream_writer(open(path, "wb"))

    def maybe_flush(self) -> None:
        for writer, lines in ((self._rc, self.rc_lines), (self._rs, self.rs_lines)):
            if len(lines) >= _FLUSH_LINES:
                self._worker.submit(writer.write, b"".join(lines))
                lines.clear()

    def close(self) -> None:
        for writer, lines in ((self._rc, self.rc_lines), (self._rs, self.rs_lines)):
            self._worker.submit(self._finish_file, writer, b"".join(lines))
            lines.clear()

    @staticmethod
    def _finish_file(writer: Any, tail: bytes) -> None:
        if tail:
            writer.write(tail)
        writer.flush(zstandard.FLUSH_FRAME)
        writer.close()  # closes the file too


class _CorpusGenerator:
    """Generates threads in time order, month by month, and routes every line to its month's file.

    Work is done in batches of threads: every per-comment quantity that does not depend on the reply tree's
    timing (category, parent index, author, score, body JSON, ...) is computed with numpy for the whole
    batch; the Python loop only accumulates reply times along the tree and formats the lines.
    """

    def __init__(self, output_dir: Path, n_comments: int, seed: int, n_months: int,
                 subreddits: tuple[str, ...]) -> None:
        self.output_dir = output_dir
        self.n_comments = n_comments
        self.seed = seed
        self.n_months = n_months
        self.subreddits = subreddits
        self.sub_offsets = np.array([subreddit_offsets(subreddits)[s] for s in subreddits])
        # crc32, not hash(): hash() is salted per process and would break byte-identical output.
        self.sub_ids = ["t5_" + np.base_repr(36**4 + zlib.crc32(s.lower().encode()) % (35 * 36**4), 36).lower()
                        for s in subreddits]
        self.sub_json = [orjson.dumps(s).decode() for s in subreddits]  # user-given names may need escaping
        self.rng = np.random.default_rng(np.random.PCG64(seed))
        self.rand = _RandomStream(self.rng)
        self.month_starts = [calendar.timegm((*_year_month(m), 1, 0, 0, 0)) for m in range(n_months + 1)]
        self.window_end = self.month_starts[-1]

        self.snippets = self._make_snippets()
        # heads[topic][keyword * _HEADS_PER_KEYWORD + k] contains TOPICS[topic][keyword]
        self.heads = [self._make_heads(words) for words in TOPICS.values()]
        self.heads_flat = [h for hs in self.heads for h in hs]  # index topic * _N_HEADS_PER_TOPIC + (kw, k)
        self.tails = self._make_tails()
        # JSON-escaped UTF-8 fragments '"' + head and tail + '"': a body's JSON string is one concatenation.
        # Bytes, not str: a str line with one emoji would be widened to 4 bytes per character and then
        # re-encoded, which costs more than everything else in the hot loop.
        self.head_json = np.array([orjson.dumps(h)[:-1] for hs in self.heads for h in hs], dtype=object)
        self.tail_json = np.array([orjson.dumps(t)[1:] for t in self.tails], dtype=object)
        self.authors = self._make_author_pool(max(2000, min(200_000, n_comments // 8)))
        self.authors_array = np.array(self.authors, dtype=object)
        # heavy-tailed thread sizes, but no single thread may dominate a small corpus
        self.max_thread_comments = max(50, min(_MAX_THREAD_COMMENTS, n_comments // 100))
        self.topic_load = [0] * len(TOPIC_NAMES)  # planned comments per thread topic
        self.keyword_load = [[0] * _WORDS_PER_TOPIC for _ in TOPIC_NAMES]  # ... per (topic, keyword)

        self._next_comment_id = _COMMENT_ID_BASE + int(self.rng.integers(0, 36**5))
        self._id_list: list[str] = []
        self._id_pos = 0
        self._next_submission_id = _SUBMISSION_ID_BASE + int(self.rng.integers(0, 36**4))

        self.lines = 0  # comment lines generated (written, or buffered for a later month)
        self.sink: _MonthSink | None = None
        self.current_month = 0
        self.spill: dict[int, list[bytes]] = {}  # month -> comment lines created there by earlier threads
        self.files: list[str] = []
        self.category_counts = [0] * 8
        self.counts = dict(malformed=0, invalid_utf8=0, duplicate=0, dangling=0, string_created=0,
                           missing_name=0, submissions=0)
        self.truth: dict[str, Any] = dict(
            threads=0, missing_submissions=0, zero_comment_submissions=0, max_depth=0, comments_past_window=0,
            op_comments=0, malformed_kinds={"truncated": 0, "garbage": 0, "array": 0, "invalid_utf8": 0},
            clean_on_topic=0, clean_marker_good=0, clean_marker_bad=0)
        self.month_has_invalid_utf8 = [False] * n_months

    # ---- vocabularies ----------------------------------------------------------------------------

    def _make_snippets(self) -> list[str]:
        lengths = self.rng.integers(2, 10, _N_SNIPPETS).tolist()
        words = self.rng.integers(0, len(FILLER_WORDS), (_N_SNIPPETS, 10)).tolist()
        commas = (self.rng.random(_N_SNIPPETS) < 0.2).tolist()
        return [" ".join(FILLER_WORDS[i] for i in row[:n]) + ("," if comma else "")
                for n, row, comma in zip(lengths, words, commas)]

    def _make_heads(self, words: tuple[str, ...]) -> list[str]:
        # A body is a pre-rendered topical head plus a pre-rendered neutral tail: one concatenation per
        # comment instead of drawing and joining ~20 words, with 4096 x 8192 combinations per topic (so
        # identical bodies stay rare). Heads and tails are neutral apart from the topic words.
        # Head h carries the keyword words[h // _HEADS_PER_KEYWORD] in a random one of its word slots.
        n_snippets = self.rng.integers(1, 4, _N_HEADS_PER_TOPIC).tolist()
        n_words = self.rng.integers(2, 5, _N_HEADS_PER_TOPIC)
        keyword_slot = (self.rng.random(_N_HEADS_PER_TOPIC) * n_words).astype(np.int64).tolist()
        n_words = n_words.tolist()
        picks = self.rng.integers(0, _N_SNIPPETS, (_N_HEADS_PER_TOPIC, 3)).tolist()
        word_picks = self.rng.integers(0, len(words), (_N_HEADS_PER_TOPIC, 4)).tolist()
        out = []
        for h, (ns, nw, slot, row, wrow) in enumerate(zip(n_snippets, n_words, keyword_slot, picks, word_picks)):
            wrow[slot] = h // _HEADS_PER_KEYWORD
            # snippet, topic word, snippet, topic word, ... until both run out
            parts = itertools.zip_longest([self.snippets[i] for i in row[:ns]], [words[i] for i in wrow[:nw]])
            text = " ".join(part for pair in parts for part in pair if part is not None).rstrip(",")
            out.append(text[:1].upper() + text[1:] + ".")
        return out

    def _make_tails(self) -> list[str]:
        n_sentences = self.rng.integers(0, 5, _N_TAILS).tolist()
        empty = (self.rng.random(_N_TAILS) < 0.4).tolist()
        picks = self.rng.integers(0, _N_SNIPPETS, (_N_TAILS, 4)).tolist()
        out = []
        for n, is_empty, row in zip(n_sentences, empty, picks):
            if is_empty or n == 0:
                out.append("")
                continue
            snippets = (self.snippets[i].rstrip(",") for i in row[:n])
            sentences = [text[:1].upper() + text[1:] + "." for text in snippets]
            # longer comments get a paragraph break, as real ones do
            out.append(("\n\n" if n >= 3 else " ") + " ".join(sentences))
        return out

    def _make_author_pool(self, size: int) -> list[str]:
        numbers = (self.rng.permutation(size) + 7).tolist()
        styles = self.rng.integers(0, 10, size).tolist()
        adj = self.rng.integers(0, len(_ADJECTIVES), size).tolist()
        noun = self.rng.integers(0, len(_NOUNS), size).tolist()
        pool = []
        for num, style, a, n in zip(numbers, styles, adj, noun):
            if style < 4:
                pool.append(f"{_ADJECTIVES[a].capitalize()}{_NOUNS[n].capitalize()}{num}")
            elif style < 7:
                pool.append(f"{_ADJECTIVES[a]}_{_NOUNS[n]}_{num}")
            elif style < 9:
                pool.append(f"{_NOUNS[n]}{num}")
            else:
                pool.append(f"throwaway{num}")
        return pool

    # ---- ids and routing -------------------------------------------------------------------------

    def _take_ids(self, n: int) -> list[str]:
        if self._id_pos + n > len(self._id_list):
            # ids are sequential base-36; the unused tail of a block is skipped (ids need not be dense)
            size = max(_ROW_BLOCK, n)
            self._id_list = _base36_block(self._next_comment_id, size, 7)
            self._next_comment_id += size
            self._id_pos = 0
        ids = self._id_list[self._id_pos:self._id_pos + n]
        self._id_pos += n
        return ids

    def _new_submission_id(self) -> str:
        self._next_submission_id += 1
        return np.base_repr(self._next_submission_id, 36).lower()

    def _route_comment_line(self, month: int, line: bytes) -> None:
        if month == self.current_month:
            self.sink.rc_lines.append(line)
        else:
            self.spill.setdefault(month, []).append(line)

    # ---- main loop -------------------------------------------------------------------------------

    def run(self) -> SynthSummary:
        worker = _CompressionThread()
        try:
            for month in range(self.n_months):
                self._run_month(month, worker)
        finally:
            worker.finish()
        self.spill.clear()  # nothing can be created after the last month (descendants are later still)
        c, cat = self.counts, self.category_counts
        return SynthSummary(
            comments_written=self.lines, submissions_written=c["submissions"], files=tuple(self.files),
            malformed_lines=c["malformed"], invalid_utf8_lines=c["invalid_utf8"],
            deleted_bodies=cat[_CAT_DELETED], removed_bodies=cat[_CAT_REMOVED], bot_comments=cat[_CAT_BOT],
            moderator_comments=cat[_CAT_MOD], empty_bodies=cat[_CAT_EMPTY], overlong_bodies=cat[_CAT_OVERLONG],
            unsettled_scores=cat[_CAT_UNSETTLED], duplicate_lines=c["duplicate"], dangling_parents=c["dangling"],
            string_created_utc=c["string_created"], missing_name=c["missing_name"],
            clean_comments=cat[_CAT_CLEAN], seed=self.seed)

    def _run_month(self, month: int, worker: _CompressionThread) -> None:
        self.current_month = month
        self.sink = _MonthSink(self.output_dir, month, worker)
        self.files += [str(self.sink.rc_path), str(self.sink.rs_path)]
        self.sink.rc_lines.extend(self.spill.pop(month, []))
        month_first_line = self.lines
        target = self.n_comments * (month + 1) // self.n_months
        while self.lines < target:
            plan = self._plan_threads(month, month_first_line, target)
            self._emit_threads(plan)
            self.sink.maybe_flush()
        self.sink.close()
        self.sink = None

    # ---- submissions -----------------------------------------------------------------------------

    def _emit_submission(self, created: int, topic: int, keyword: int, sub: int, sid: str, author: str,
                         num_comments: int) -> None:
        rand = self.rand
        subreddit = self.subreddits[sub]
        words = TOPICS[TOPIC_NAMES[topic]]
        snippet = self.snippets[rand.integer(_N_SNIPPETS)].rstrip(",")
        title = (f"{_TITLE_STARTS[rand.integer(len(_TITLE_STARTS))]} {words[keyword]} {snippet} "
                 f"{words[rand.integer(len(words))]}?")
        is_self = rand.uniform() < 0.5
        removed_by = None
        if is_self:
            head = keyword * _HEADS_PER_KEYWORD + rand.integer(_HEADS_PER_KEYWORD)
            selftext = self.heads[topic][head] + self.tails[rand.integer(_N_TAILS)]
            u = rand.uniform()
            if u < 0.05:
                selftext, author, removed_by = "[deleted]", "[deleted]", "deleted"
            elif u < 0.08:
                selftext, removed_by = "[removed]", "moderator"
            url = f"https://www.reddit.com/r/{subreddit}/comments/{sid}/"
            domain = f"self.{subreddit}"
        else:
            selftext = ""
            domain = _LINK_DOMAINS[rand.integer(len(_LINK_DOMAINS))]
            url = f"https://{domain}/{sid}{rand.integer(10**6)}"
        score = 1 + int(math.expm1(rand.uniform() ** 2 * 8.0))
        record = {
            "archived": False, "author": author, "author_flair_css_class": None, "author_flair_text": None,
            "created_utc": created, "distinguished": None, "domain": domain, "edited": False, "gilded": 0,
            "id": sid, "is_self": is_self, "name": "t3_" + sid, "num_comments": num_comments,
            "over_18": rand.uniform() < 0.03, "permalink": f"/r/{subreddit}/comments/{sid}/",
            "removed_by_category": removed_by, "retrieved_on": created + 2 * 86400 + rand.integer(100 * 86400),
            "score": score, "selftext": selftext, "stickied": False, "subreddit": subreddit,
            "subreddit_id": self.sub_ids[sub], "title": title, "upvote_ratio": round(0.55 + 0.45 * rand.uniform(), 2),
            "url": url,
        }
        self.sink.rs_lines.append(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        self.counts["submissions"] += 1

    # ---- threads ---------------------------------------------------------------------------------

    def _plan_threads(self, month: int, month_first_line: int, target: int) -> _ThreadPlan:
        """Thread-level draws for the next batch: enough threads for ~_BATCH_COMMENTS comments (fewer near the
        month's target, so threads stay spread evenly over the month)."""
        rand = self.rand
        start = self.month_starts[month]
        length = self.month_starts[month + 1] - start
        want = min(_BATCH_COMMENTS, target - self.lines)
        plan = _ThreadPlan([], [], [], [], [], [], [], [], [], [])
        planned = 0
        while planned < want:
            n = min(1 + int(math.exp(2.3 + 1.25 * rand.normal())), self.max_thread_comments)  # heavy-tailed
            # Threads are spread over the month in proportion to the budget consumed, so lines come out in
            # time order without knowing the thread count in advance. Capped below the month end so the last
            # month always leaves room for replies before the window closes (progress guaranteed).
            frac = (self.lines + planned - month_first_line) / max(1, target - month_first_line)
            jitter = int(rand.uniform() * 1200) - 600
            plan.t_sub.append(start + min(max(int(min(frac, 0.97) * length) + jitter, 0), int(0.98 * length)))
            plan.sizes.append(n)
            # The thread gets the topic with the fewest comments so far (ties: random). Balancing the
            # comment-weighted topic mix keeps P(on-topic | reply topic) = P_ON_TOPIC for every topic on a
            # finite corpus too; with uniform random topics a few huge threads would let the reply's own
            # topic leak whether it is on-topic.
            topic = self._least_loaded(self.topic_load, n)
            plan.topics.append(topic)
            # The thread's keyword (in its title; every on-topic reply reuses it), balanced the same way
            # inside the topic, so a reply's keyword does not tell whether it is on-topic either.
            plan.keywords.append(self._least_loaded(self.keyword_load[topic], n))
            plan.subs.append(rand.integer(len(self.subreddits)))
            plan.op_idx.append(rand.integer(len(self.authors)))
            plan.p_top.append(0.25 + 0.35 * rand.uniform())  # share of top-level comments varies by thread
            plan.p_chain.append(0.75 if rand.uniform() < 0.10 else 0.0)  # ~10 % are long back-and-forth arguments
            plan.p_op_reply.append(0.15 if rand.uniform() < 0.4 else 0.0)  # OP answers in ~40 % of threads
            plan.missing.append(rand.uniform() < RATE_MISSING_SUBMISSION)
            planned += n
        return plan

    def _least_loaded(self, loads: list[int], n: int) -> int:
        """A random one of the entries with the smallest load (ties), which then carries `n` more."""
        least = min(loads)
        candidates = [k for k, load in enumerate(loads) if load == least]
        k = candidates[self.rand.integer(len(candidates))]
        loads[k] += n
        return k

    def _comment_columns(self, plan: _ThreadPlan) -> list[list]:
        """Per-comment columns for all threads of the plan (vectorized; see the unpacking in _emit_threads)."""
        rng = self.rng
        sizes = np.array(plan.sizes, dtype=np.int64)
        total = int(sizes.sum())
        thread = np.repeat(np.arange(len(sizes)), sizes)
        index = np.arange(total) - np.repeat(np.cumsum(sizes) - sizes, sizes)  # position inside its thread
        u = rng.random((total, 22))
        normal = rng.standard_normal(total)

        category = np.searchsorted(_CAT_THRESHOLDS, u[:, 0], side="right")
        on_topic = u[:, 1] < P_ON_TOPIC
        shift = np.where(on_topic, 0, 1 + (u[:, 2] * (len(TOPIC_NAMES) - 1)).astype(np.int64))
        topic = (np.array(plan.topics)[thread] + shift) % len(TOPIC_NAMES)  # topic of the body's words
        marker = np.where(u[:, 3] < P_MARKER_GOOD, 1, np.where(u[:, 3] < P_MARKER_GOOD + P_MARKER_BAD, -1, 0))
        marker_code = marker * (1 + (u[:, 4] * len(MARKERS_GOOD)).astype(np.int64))  # +-(phrase index + 1)
        mean_delay = np.where(u[:, 5] < P_FAST_REPLY, FAST_REPLY_MEAN, SLOW_REPLY_MEAN)
        delay = MIN_REPLY_DELAY + np.floor(-np.log1p(-u[:, 6]) * mean_delay).astype(np.int64)
        noise = NOISE_SIGMA * normal + VIRAL_SCALE * (-np.log1p(-u[:, 7]) - 1.0)
        latent = (LATENT_BIAS + W_TOPIC * on_topic + W_MARKER * marker + W_EARLY * np.exp(-delay / TAU_EARLY_SECONDS)
                  + self.sub_offsets[np.array(plan.subs)[thread]] + noise)
        score = _scores_from_latent(latent)

        # Tree shape: the first comment is top level; argument threads chain onto the previous comment;
        # otherwise top level, or a reply to a uniformly chosen earlier comment (depth grows like log n).
        p_chain = np.array(plan.p_chain)[thread]
        top = (index == 0) | (u[:, 8] < np.array(plan.p_top)[thread])
        chained = u[:, 9] < p_chain
        uniform_parent = ((u[:, 9] - p_chain) / (1.0 - p_chain) * index).astype(np.int64)
        parent = np.where(top, -1, np.where(chained, index - 1, uniform_parent))

        op_idx = np.array(plan.op_idx)[thread]
        by_op = (parent >= 0) & (u[:, 10] < np.array(plan.p_op_reply)[thread])
        author_idx = np.where(by_op, op_idx, (len(self.authors) * u[:, 11] ** 2).astype(np.int64))  # skewed
        # On-topic replies reuse the thread's keyword (as real replies echo the post's words); off-topic ones
        # carry a uniformly drawn keyword of their own topic.
        keyword = np.where(on_topic, np.array(plan.keywords)[thread],
                           (u[:, 21] * _WORDS_PER_TOPIC).astype(np.int64))
        head = (topic * _N_HEADS_PER_TOPIC + keyword * _HEADS_PER_KEYWORD
                + (u[:, 12] * _HEADS_PER_KEYWORD).astype(np.int64))
        tail = (u[:, 13] * _N_TAILS).astype(np.int64)
        body_json = self.head_json[head] + self.tail_json[tail]  # object arrays: str concatenation in C
        retrieval = 2 * 86400 + (u[:, 14] * 118 * 86400).astype(np.int64)  # settled: 2-120 days later
        flags = ((u[:, 15] < RATE_STRING_CREATED) * _FLAG_STRING_CREATED
                 + (u[:, 16] < RATE_MISSING_NAME) * _FLAG_NO_NAME + (u[:, 17] < RATE_DANGLING) * _FLAG_DANGLING
                 + (u[:, 18] < RATE_DUPLICATE) * _FLAG_DUPLICATE
                 # one uniform for both: an inserted malformed line and an edit are unrelated, never both
                 + (u[:, 19] < RATE_MALFORMED) * _FLAG_MALFORMED
                 + ((u[:, 19] >= RATE_MALFORMED) & (u[:, 19] < RATE_MALFORMED + RATE_EDITED)) * _FLAG_EDITED)
        columns = [parent, delay, category, on_topic, marker_code, self.authors_array[author_idx],
                   author_idx == op_idx, score, body_json, head, tail, retrieval, flags, u[:, 19], u[:, 20]]
        return [c.tolist() for c in columns]

    def _emit_threads(self, plan: _ThreadPlan) -> None:
        columns = self._comment_columns(plan)
        rand, truth, counts, cat_counts = self.rand, self.truth, self.counts, self.category_counts
        window_end, current_month = self.window_end, self.current_month
        next_month_start = self.month_starts[current_month + 1]
        rc_lines = self.sink.rc_lines
        heads_flat, tails = self.heads_flat, self.tails
        dumps = orjson.dumps
        cat_clean, cat_unsettled = _CAT_CLEAN, _CAT_UNSETTLED
        lines, limit = self.lines, self.n_comments
        max_depth, past_window, op_comments = truth["max_depth"], 0, 0
        on_topic_clean = marker_good_clean = marker_bad_clean = 0
        first = 0
        for k, n in enumerate(plan.sizes):
            if lines >= limit:
                break  # hard budget: comments_written == n_comments exactly
            last = first + n
            t_sub, topic, sub, op_author = plan.t_sub[k], plan.topics[k], plan.subs[k], self.authors[plan.op_idx[k]]
            keyword = plan.keywords[k]
            sid = self._new_submission_id()
            truth["threads"] += 1
            if plan.missing[k]:
                truth["missing_submissions"] += 1  # exercises the "submission missing" path downstream
            else:
                self._emit_submission(t_sub, topic, keyword, sub, sid, op_author, n)
            subreddit, sub_id, subreddit_json = self.subreddits[sub], self.sub_ids[sub], self.sub_json[sub]
            link_id = "t3_" + sid
            ids = self._take_ids(n)  # phantom parents and malformed records draw theirs later (never reused)
            times: list[int] = []
            depths: list[int] = []
            duplicates: list[tuple[int, bytes]] = []
            i = -1
            for (parent, delay, cat, on_topic, marker_code, author, is_submitter, score, body_json, head, tail,
                 retrieval, flags, u_rare, u_misc) in zip(*[column[first:last] for column in columns]):
                i += 1
                if lines >= limit:
                    break
                if parent < 0:
                    created = t_sub + delay
                    depth = 0
                else:
                    created = times[parent] + delay
                    depth = depths[parent] + 1
                times.append(created)
                depths.append(depth)
                if created >= window_end:
                    past_window += 1  # after the last month: in no file, nor are its (later) descendants
                    continue
                if depth > max_depth:
                    max_depth = depth
                if parent >= 0 and is_submitter:
                    op_comments += 1
                retrieved = created + retrieval
                distinguished = "null"
                stickied = "false"
                if cat == cat_clean:
                    if marker_code:
                        body_json = dumps(self._add_marker(heads_flat[head] + tails[tail], marker_code, head))
                        marker_good_clean += marker_code > 0
                        marker_bad_clean += marker_code < 0
                    on_topic_clean += on_topic
                else:
                    body, author, score, retrieved, distinguished, stickied = self._special_comment(
                        cat, heads_flat[head] + tails[tail], marker_code, head, author, score, created, retrieved,
                        parent < 0, u_misc)
                    body_json = dumps(body)
                    is_submitter = author == op_author
                cat_counts[cat] += 1

                parent_id = link_id if parent < 0 else "t1_" + ids[parent]
                cid = ids[i]
                created_json = created
                name_json = f'"name":"t1_{cid}",'
                edited_json = "false"
                if flags:  # rare events (~10 % of comments): kept off the common path
                    if flags & _FLAG_DANGLING:
                        parent_id = "t1_" + self._take_ids(1)[0]  # parent never archived: no line has this id
                        counts["dangling"] += 1
                    if flags & _FLAG_EDITED and cat != cat_unsettled:
                        edited_json = min(created + 60 + int((u_rare - RATE_MALFORMED) / RATE_EDITED * 7200),
                                          retrieved - 1)
                    if flags & _FLAG_STRING_CREATED:
                        created_json = f'"{created}"'
                        counts["string_created"] += 1
                    if flags & _FLAG_NO_NAME:
                        name_json = ""
                        counts["missing_name"] += 1
                # Formatted by hand (2-3x faster than dict + orjson.dumps, the hot spot); every string that
                # could need escaping went through orjson, and the line is byte-identical to orjson.dumps of the
                # dict in this key order (the tests check that on every line).
                line = b"".join((
                    f'{{"author":"{author}","author_flair_css_class":null,"author_flair_text":null,"body":'.encode(),
                    body_json,
                    (f',"controversiality":{1 if (u_misc > 0.94 and -5 < score < 5) else 0},'
                        f'"created_utc":{created_json},"distinguished":{distinguished},"downs":0,'
                        f'"edited":{edited_json},"gilded":{1 if (score >= 200 and u_misc < 0.15) else 0},'
                        f'"id":"{cid}","is_submitter":{"true" if is_submitter else "false"},'
                        f'"link_id":"{link_id}",{name_json}"parent_id":"{parent_id}","retrieved_on":{retrieved},'
                        f'"score":{score},"stickied":{stickied},"subreddit":{subreddit_json},'
                        f'"subreddit_id":"{sub_id}","ups":{score}}}\n').encode()))
                if created < next_month_start:
                    month = current_month
                    rc_lines.append(line)
                else:  # a late reply in a thread that started last month: goes to that later month's file
                    month = bisect.bisect_right(self.month_starts, created) - 1
                    self._route_comment_line(month, line)
                lines += 1

                if flags:
                    if flags & _FLAG_DUPLICATE and lines < limit and cat == cat_clean and not flags & (
                            _FLAG_DANGLING | _FLAG_STRING_CREATED | _FLAG_NO_NAME):
                        duplicates.append((month, line))  # re-emitted after the thread: an exact, later copy
                        lines += 1
                        counts["duplicate"] += 1
                    if flags & _FLAG_MALFORMED and lines < limit:
                        self._route_comment_line(month, self._malformed_line(
                            month, created, subreddit, sub_id, link_id, u_rare / RATE_MALFORMED))
                        lines += 1
            for month, line in duplicates:
                self._route_comment_line(month, line)
            first = last
            if rand.uniform() < RATE_ZERO_COMMENT_SUBMISSION:  # RS rows nobody commented on
                self._emit_submission(t_sub + rand.integer(3600), rand.integer(len(TOPIC_NAMES)),
                                      rand.integer(_WORDS_PER_TOPIC), rand.integer(len(self.subreddits)), self._new_submission_id(),
                                      self.authors[rand.integer(len(self.authors))], 0)
                truth["zero_comment_submissions"] += 1
        self.lines = lines
        truth["max_depth"] = max_depth
        truth["comments_past_window"] += past_window
        truth["op_comments"] += op_comments
        truth["clean_on_topic"] += on_topic_clean
        truth["clean_marker_good"] += marker_good_clean
        truth["clean_marker_bad"] += marker_bad_clean

    def _special_comment(self, cat: int, text: str, marker_code: int, head: int, author: str, score: int,
                         created: int, retrieved: int, top_level: bool, u_misc: float
                         ) -> tuple[str, str, int, int, str, str]:
        """(body, author, score, retrieved_on, distinguished JSON, stickied JSON) of a non-clean comment."""
        distinguished, stickied = "null", "false"
        if cat == _CAT_UNSETTLED:
            # fetched in real time: the score has not moved from its initial 1 yet
            body = self._add_marker(text, marker_code, head) if marker_code else text
            retrieved = created + 2 + int(u_misc * (UNSETTLED_SECONDS - 10))
            score = 1 if u_misc < 0.8 else (2 if u_misc < 0.9 else 0)
        elif cat == _CAT_DELETED:
            body = author = "[deleted]"
        elif cat == _CAT_REMOVED:
            body = "[removed]"
        elif cat == _CAT_BOT:
            author = BOT_AUTHORS[int(u_misc * len(BOT_AUTHORS))]
            body = _BOT_BODIES[author]
            score = 1
            if author == "AutoModerator":  # AutoModerator posts are distinguished and pinned
                distinguished, stickied = '"moderator"', "true" if top_level else "false"
        elif cat == _CAT_MOD:
            body = _MOD_BODIES[int(u_misc * len(_MOD_BODIES))]
            distinguished, stickied = '"moderator"', "true" if top_level and u_misc < 0.5 else "false"
        elif cat == _CAT_EMPTY:
            body = _EMPTY_BODIES[int(u_misc * len(_EMPTY_BODIES))]
        else:  # overlong: a copypasta repeated past the limit
            body = " ".join([text] * ((OVERLONG_CHARS + 1 + int(u_misc * 3000)) // (len(text) + 1) + 1))
        return body, author, score, retrieved, distinguished, stickied

    def _add_marker(self, body: str, marker_code: int, head: int) -> str:
        lowered = f"{body[:1].lower()}{body[1:]}"
        if marker_code > 0:
            phrase = MARKERS_GOOD[marker_code - 1]
            templates = {
                "source:": f"{body} Source: https://doi.org/10.1000/{head * 7919 % 100000}",
                "thanks for": f"{body} Thanks for asking!",
                "for example": f"{body} For example, {self.snippets[head % _N_SNIPPETS].rstrip(',')}.",
            }
            return templates.get(phrase, f"{phrase.capitalize()}, {lowered}")  # "In my experience, ..."
        phrase = MARKERS_BAD[-marker_code - 1]
        templates = {"first!": f"First! {body}", "this.": f"This. {body}", "who cares": f"Who cares, {lowered}"}
        return templates.get(phrase, f"{body} {phrase}")  # "lol", "/s"

    def _malformed_line(self, month: int, created: int, subreddit: str, sub_id: str, link_id: str,
                        u: float) -> bytes:
        """A line that is not a JSON object; the first one of each month carries invalid UTF-8."""
        kinds = self.truth["malformed_kinds"]
        self.counts["malformed"] += 1
        # an extra record (fresh id, nothing replies to it), as if the scraper had choked on it
        record = {"author": "[deleted]", "body": "partial record lost in the scrape", "created_utc": created,
                  "id": self._take_ids(1)[0], "link_id": link_id, "parent_id": link_id, "score": 1,
                  "subreddit": subreddit, "subreddit_id": sub_id}
        if not self.month_has_invalid_utf8[month] or u < 0.15:
            self.month_has_invalid_utf8[month] = True
            self.counts["invalid_utf8"] += 1
            kinds["invalid_utf8"] += 1
            raw = orjson.dumps(record)
            # a stray byte inside the body AND one between two fields: invalid UTF-8, and still invalid JSON
            # for a lenient reader that decodes with errors="replace"
            raw = raw.replace(b'"body":"', b'"body":"\xff\xfe', 1).replace(b',"id"', b',\xc3"id"', 1)
            return raw + b"\n"
        if u < 0.55:
            kinds["truncated"] += 1
            text = orjson.dumps(record).decode()
            cut = 5 + int((u - 0.15) / 0.4 * (len(text) - 10))
            return text[:cut].encode() + b"\n"  # a strict prefix of an object is never valid JSON
        if u < 0.8:
            kinds["array"] += 1
            return orjson.dumps([record], option=orjson.OPT_APPEND_NEWLINE)
        kinds["garbage"] += 1
        return _GARBAGE_LINES[int((u - 0.8) / 0.2 * len(_GARBAGE_LINES))] + b"\n"


def write_synthetic_corpus(output_dir: str | Path, n_comments: int, seed: int = 0, *, n_months: int | None = None,
                           subreddits: Sequence[str] | None = None) -> SynthSummary:
    """Write RC_/RS_YYYY-MM.zst (from 2015-01) and synth_summary.json into output_dir; return the counts.

    n_comments is the exact number of comment lines written (malformed and duplicate lines included).
    n_months defaults to max(2, round(n_comments / COMMENTS_PER_MONTH)). Deterministic in all arguments.
    SynthSummary.files lists the RC/RS files (month order, RC before RS), not synth_summary.json.
    """
    if n_comments < 0:
        raise ValueError("n_comments must be >= 0")
    months = n_months if n_months is not None else max(2, round(n_comments / COMMENTS_PER_MONTH))
    if months < 1:
        raise ValueError("n_months must be >= 1")
    subs = tuple(subreddits) if subreddits else DEFAULT_SUBREDDITS
    if len(set(subs)) != len(subs) or not all(isinstance(s, str) and s for s in subs):
        raise ValueError("subreddits must be unique non-empty strings")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    generator = _CorpusGenerator(out, n_comments, seed, months, subs)
    summary = generator.run()
    report = {**summary.to_dict(), "n_months": months, "subreddits": list(subs), "planted": planted_description(subs),
              "ground_truth": generator.truth}
    (out / "synth_summary.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return summary
