#!/usr/bin/env python
"""Generate fctc's bundled spoken corpus: digit strings and short commands, spoken by two
speech synthesisers, espeak-ng and flite.

Every utterance is a short English phrase (a digit string of 1 to 7 digits such as "five five
five one two oh seven", a command such as "turn on the lights", or a command with digits such
as "dial nine one one") spoken by one *voice* of one *engine*, at a random rate and pitch:

- espeak-ng (formant synthesis): a voice is an English base voice (an accent) combined with a
  voice variant (a speaker: pitch range, formants, synthesiser), e.g. ``en-gb-scotland+m3``;
  8 bases times 24 variants make 192 voices.
- flite (CMU Flite): a voice is one of its speakers: ``kal16`` (US male, diphone
  concatenation), ``slt`` (US female), ``rms`` (US male) and ``awb`` (Scottish male), the last
  three statistical parametric ("clustergen", HTS-like) voices. flite's other voices are left
  out: ``kal`` is ``kal16``'s speaker at 8 kHz, ``awb_time`` only speaks clock times.

The splits share no voice. For espeak-ng, every variant's combinations with the base voices are
dealt out so that train holds 6 of the 8, validation 1 and test 1, rotating which base goes
where: every base and every variant is heard in training, but each validation and test voice
(base + variant) is new. For flite, whose four speakers are four different people, training
hears ``kal16`` and ``slt`` (both synthesis methods, both sexes), validation holds ``rms`` (so
model selection sees an unseen flite speaker) and test holds ``awb``, a speaker and an accent
no flite voice in training has: the test split's flite part measures generalisation to an
unseen voice of a synthesiser, reported apart from its espeak-ng part.

Within a split, the commands and templates take turns like the voices do, so each is said
about equally often and training says every one. Digit strings name zero "oh" or "zero" (one
habit per utterance); strings of 5 to 7 digits are often spoken grouped like a phone number,
with a pause ("five five five, one two oh seven"), while the transcript stays words and
spaces. The audio is resampled to 16 kHz mono (espeak-ng
speaks at 22050 Hz, flite at 16 kHz), its leading and trailing silence is trimmed, its peak
level is drawn at random, and it is written as 16-bit FLAC.

Everything is drawn from one seed (texts, voices, rates, pitches, gains), and both engines are
deterministic, so the same seed and the same versions of espeak-ng, flite, libsndfile and soxr
(recorded in ``<out>/provenance.json``) give the same corpus byte for byte.

Output, for each split, ``<out>/<split>.jsonl`` (NeMo-style manifest lines with
``audio_filepath`` relative to the manifest, ``duration`` in seconds, ``text``, and the
``engine``, ``voice``, ``rate`` and ``pitch`` used) and the FLAC files under ``<out>/<split>/``.

Usage::

    apt-get install espeak-ng flite      # the synthesisers (Debian/Ubuntu packages)
    python scripts/make_corpus.py        # writes fctc/corpus/, checks its size
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000
SPLITS = ("train", "validation", "test")
ENGINES = ("espeak-ng", "flite")
# Utterances per split and engine (--counts changes them).
COUNTS = {
    "train": {"espeak-ng": 580, "flite": 840},
    "validation": {"espeak-ng": 80, "flite": 60},
    "test": {"espeak-ng": 150, "flite": 100},
}

# espeak-ng's English base voices (its "gmw" family; the mbrola voices need extra packages).
ESPEAK_BASES = (
    "en-gb",
    "en-us",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-gb-x-rp",
    "en-029",
    "en-us-nyc",
)
# Voice variants that still sound like a person speaking (the robots and effects are left out).
ESPEAK_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7",
    "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "klatt4",
    "croak", "whisper",
    "Andy", "Annie", "belinda", "grandpa", "steph", "david",
)  # fmt: skip
# flite's speakers and the split each one speaks in (see the module docstring for why).
FLITE_SPLIT = {"kal16": "train", "slt": "train", "rms": "validation", "awb": "test"}
FLITE_FIXED_PITCH = ("rms",)  # its F0 model ignores f0_shift: its pitch is always 1.0

ESPEAK_RATE = (150, 220)  # words per minute (espeak-ng -s; its default is 175)
ESPEAK_PITCH = (25, 75)  # espeak-ng -p, 0..99 (default 50)
FLITE_RATE = (0.80, 1.20)  # flite duration_stretch (> 1 is slower), two decimals
FLITE_PITCH = (0.85, 1.20)  # flite f0_shift (multiplies the voice's F0), two decimals
PEAK_RANGE = (0.2, 0.6)  # peak amplitude of the written audio
TRIM_DB = 40.0  # frames quieter than the loudest by this much count as silence
MARGIN_S = 0.04  # silence kept before the first and after the last loud frame

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_COUNTS = (1, 2, 3, 4, 5, 6, 7)
DIGIT_COUNT_WEIGHTS = (0.10, 0.10, 0.15, 0.15, 0.15, 0.15, 0.20)
PHONE_GROUPS = {5: 2, 6: 3, 7: 3}  # digits before the pause when a string is spoken grouped
COMMANDS = (
    "stop", "go", "go back", "go forward", "next", "previous", "play", "pause", "yes", "no",
    "left", "right", "up", "down", "cancel", "help", "mute", "repeat", "louder", "quieter",
    "start", "start again", "wake up", "go to sleep", "lights on", "lights off",
    "turn on the lights", "turn off the lights", "volume up", "volume down", "turn left",
    "turn right", "speed up", "slow down", "open the door", "close the door", "call home",
    "play music", "next song", "what time is it", "read my messages", "set an alarm",
    "show the map", "take a picture", "answer the call",
)  # fmt: skip
# Commands with digits: "{d}" is one digit, "{n}" two or three, "{phone}" three to seven.
TEMPLATES = (
    "channel {n}", "floor {d}", "room {n}", "page {n}", "track {d}", "volume {d}",
    "dial {phone}", "call {phone}", "go to {d}",
)  # fmt: skip
KIND_WEIGHTS = {"digits": 0.45, "command": 0.35, "template": 0.20}

CHARACTERS = " abcdefghijklmnopqrstuvwxyz"


def split_voices(seed: int) -> dict[str, dict[str, list[str]]]:
    """Deal every voice to one split: per espeak-ng variant 6 voices to train, 1 to validation
    and 1 to test; flite's speakers as :data:`FLITE_SPLIT` says.

    The espeak-ng validation and test bases rotate over the variants (a Latin-square pattern
    from a seeded permutation), so each base voice lends the same number of voices to each
    split.

    Args:
        seed: the corpus seed.

    Returns:
        ``{split: {engine: sorted voice names}}``.
    """
    rng = np.random.default_rng([seed, 1])
    bases = [ESPEAK_BASES[i] for i in rng.permutation(len(ESPEAK_BASES))]
    order = [ESPEAK_VARIANTS[i] for i in rng.permutation(len(ESPEAK_VARIANTS))]
    out: dict[str, dict[str, list[str]]] = {s: {e: [] for e in ENGINES} for s in SPLITS}
    n = len(bases)
    for j, variant in enumerate(order):
        for k, base in enumerate(bases):
            slot = (k - j) % n
            split = "validation" if slot == 0 else "test" if slot == 1 else "train"
            out[split]["espeak-ng"].append(f"{base}+{variant}")
    for voice, split in FLITE_SPLIT.items():
        out[split]["flite"].append(voice)
    return {s: {e: sorted(v) for e, v in by.items()} for s, by in out.items()}


def digit_string(rng: np.random.Generator, n: int) -> tuple[list[str], str]:
    """``n`` random digits as words, zero said "oh" or "zero" (one habit per string).

    Args:
        rng: the plan's generator.
        n: how many digits.

    Returns:
        ``(words, spoken)``: the digit words, and the text the synthesiser reads, which groups
        a string of 5 to 7 digits like a phone number (a comma, hence a pause) half the time.
    """
    zero = "oh" if rng.random() < 0.5 else "zero"
    words = [zero if d == 0 else DIGITS[d] for d in rng.integers(0, 10, size=n)]
    if n in PHONE_GROUPS and rng.random() < 0.5:
        cut = PHONE_GROUPS[n]
        return words, " ".join(words[:cut]) + ", " + " ".join(words[cut:])
    return words, " ".join(words)


class Turns:
    """Items that take turns, in a fresh random order every round, so that each comes up about
    equally often (voices within a split, commands, templates).

    Args:
        items: what takes turns.
    """

    def __init__(self, items: tuple | list) -> None:
        self.items = list(items)
        self.count = 0

    def next(self, rng: np.random.Generator):
        """The next item, shuffling the items first at the start of every round.

        Args:
            rng: the split's generator.

        Returns:
            One of the items.
        """
        if self.count % len(self.items) == 0:
            rng.shuffle(self.items)
        item = self.items[self.count % len(self.items)]
        self.count += 1
        return item


def make_text(rng: np.random.Generator, commands: Turns, templates: Turns) -> tuple[str, str]:
    """One random utterance: a digit string, a command, or a command with digits.

    Args:
        rng: the split's generator.
        commands: :data:`COMMANDS` taking turns.
        templates: :data:`TEMPLATES` taking turns.

    Returns:
        ``(text, spoken)``: the transcript (lower-case words and single spaces) and the text
        the synthesiser reads (the same words, perhaps with a comma for a pause).
    """
    kinds = list(KIND_WEIGHTS)
    kind = kinds[rng.choice(len(kinds), p=list(KIND_WEIGHTS.values()))]
    if kind == "command":
        text = commands.next(rng)
        return text, text
    if kind == "digits":
        words, spoken = digit_string(rng, int(rng.choice(DIGIT_COUNTS, p=DIGIT_COUNT_WEIGHTS)))
        return " ".join(words), spoken
    template = templates.next(rng)
    field = template[template.index("{") + 1 : template.index("}")]
    n = {"d": 1, "n": int(rng.integers(2, 4)), "phone": int(rng.integers(3, 8))}[field]
    words, spoken = digit_string(rng, n)
    return template.format(**{field: " ".join(words)}), template.format(**{field: spoken})


def draw_controls(rng: np.random.Generator, engine: str, voice: str) -> tuple[float, float]:
    """A random speaking rate and pitch in the engine's own units (see the ``*_RATE`` and
    ``*_PITCH`` ranges).

    Args:
        rng: the plan's generator.
        engine: ``"espeak-ng"`` or ``"flite"``.
        voice: the voice (a flite voice in :data:`FLITE_FIXED_PITCH` keeps pitch 1.0).

    Returns:
        ``(rate, pitch)``: espeak-ng's words per minute and 0..99 pitch (integers), or flite's
        duration stretch and F0 factor (two decimals, exactly what the engine is given).
    """
    if engine == "espeak-ng":
        rate = int(rng.integers(ESPEAK_RATE[0], ESPEAK_RATE[1] + 1))
        return rate, int(rng.integers(ESPEAK_PITCH[0], ESPEAK_PITCH[1] + 1))
    rate = round(float(rng.uniform(*FLITE_RATE)), 2)
    pitch = round(float(rng.uniform(*FLITE_PITCH)), 2)
    return rate, 1.0 if voice in FLITE_FIXED_PITCH else pitch


def engine_order(rng: np.random.Generator, counts: dict[str, int]) -> list[str]:
    """The engine of each utterance of a split, interleaved at random (so the first N
    utterances of a split hold both engines).

    Args:
        rng: the split's generator.
        counts: utterances per engine.

    Returns:
        One engine name per utterance of the split.
    """
    engines = [e for e in ENGINES for _ in range(counts[e])]
    return [engines[i] for i in rng.permutation(len(engines))]


def plan(seed: int, counts: dict[str, dict[str, int]]) -> list[dict]:
    """The whole corpus as utterance specs, drawn from ``seed`` alone.

    Each split draws from its own generator, so the validation and test utterances do not
    depend on the size of the training split. Within a split, the voices of an engine, the
    commands and the templates take turns (:class:`Turns`), so each comes up about equally
    often (and training, with far more commands than :data:`COMMANDS`, holds every one).

    Args:
        seed: the corpus seed.
        counts: utterances per split and engine, like :data:`COUNTS`.

    Returns:
        One dict per utterance, split by split: ``split``, ``name`` (its path in the corpus),
        ``engine``, ``voice``, ``rate``, ``pitch``, ``peak``, ``text`` and ``spoken``.
    """
    voices = split_voices(seed)
    specs = []
    for k, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, 2, k])
        turns = {e: Turns(voices[split][e]) for e in ENGINES}
        commands, templates = Turns(COMMANDS), Turns(TEMPLATES)
        for i, engine in enumerate(engine_order(rng, counts[split])):
            voice = turns[engine].next(rng)
            rate, pitch = draw_controls(rng, engine, voice)
            peak = float(rng.uniform(*PEAK_RANGE))
            text, spoken = make_text(rng, commands, templates)
            specs.append({
                "split": split, "name": f"{split}/{i:04d}.flac", "engine": engine,
                "voice": voice, "rate": rate, "pitch": pitch, "peak": peak, "text": text,
                "spoken": spoken,
            })  # fmt: skip
    return specs


def parse_counts(items: list[str]) -> dict[str, dict[str, int]]:
    """:data:`COUNTS` with ``SPLIT:ENGINE=N`` overrides from the command line.

    Args:
        items: e.g. ``["train:flite=300"]``.

    Returns:
        Utterances per split and engine.

    Raises:
        SystemExit: an item that is not ``SPLIT:ENGINE=N`` with a known split and engine.
    """
    counts = {s: dict(by) for s, by in COUNTS.items()}
    for item in items:
        where, _, n = item.partition("=")
        split, _, engine = where.partition(":")
        if split not in SPLITS or engine not in ENGINES or not n.isdigit():
            sys.exit(f"--counts {item!r}: expected SPLIT:ENGINE=N with SPLIT one of {SPLITS} "
                     f"and ENGINE one of {ENGINES}, e.g. train:flite=300")  # fmt: skip
        counts[split][engine] = int(n)
    return counts


def engine_binary(engine: str) -> str:
    """The executable of a synthesiser, or exit naming the package to install.

    Args:
        engine: ``"espeak-ng"`` or ``"flite"`` (also the names of their executables and of
            their Debian packages).

    Returns:
        The executable's path.
    """
    exe = shutil.which(engine)
    if exe is None:
        sys.exit(
            f"make_corpus.py needs the {engine} speech synthesiser, which was not found on "
            f"PATH. Install it, e.g. on Debian/Ubuntu: apt-get install {engine} "
            f"(macOS: brew install {engine})."
        )
    return exe


def provenance(seed: int, counts: dict[str, dict[str, int]]) -> dict:
    """What the corpus bytes depend on: the seed, the counts and every tool's version.

    Args:
        seed: the corpus seed.
        counts: utterances per split and engine.

    Returns:
        A JSON-ready dict (``seed``, ``counts``, ``espeak-ng``, ``flite``, ``libsndfile``,
        ``soxr``).
    """
    espeak = subprocess.run([engine_binary("espeak-ng"), "--version"], capture_output=True,
                            text=True, check=True).stdout.split(" Data at")[0].strip()  # fmt: skip
    # (flite --version exits with status 1)
    flite = subprocess.run([engine_binary("flite"), "--version"], capture_output=True,
                           text=True).stdout  # fmt: skip
    flite = next(line for line in flite.splitlines() if "version" in line).strip()
    return {"seed": seed, "counts": counts, "espeak-ng": espeak,
            "flite": flite, "libsndfile": sf.__libsndfile_version__,
            "soxr": soxr.__version__}  # fmt: skip


def engine_command(spec: dict, wav: str) -> list[str]:
    """The command line that speaks one spec into a WAV file.

    Args:
        spec: one entry of :func:`plan`.
        wav: the WAV file to write.

    Returns:
        The argument list for :func:`subprocess.run`.
    """
    exe = engine_binary(spec["engine"])
    if spec["engine"] == "espeak-ng":
        return [exe, "-v", spec["voice"], "-s", str(spec["rate"]), "-p", str(spec["pitch"]),
                "-w", wav, spec["spoken"]]  # fmt: skip
    return [exe, "-voice", spec["voice"], "--setf", f"duration_stretch={spec['rate']}",
            "--setf", f"f0_shift={spec['pitch']}", "-t", spec["spoken"], "-o", wav]  # fmt: skip


def synthesise(spec: dict, tmpdir: str) -> np.ndarray:
    """Speak one spec and return it as 16 kHz float32 mono audio, trimmed and levelled.

    Args:
        spec: one entry of :func:`plan`.
        tmpdir: a directory for the engine's WAV file (removed again).

    Returns:
        The audio, its peak at ``spec["peak"]``.
    """
    wav = os.path.join(tmpdir, spec["name"].replace("/", "_") + ".wav")
    subprocess.run(engine_command(spec, wav), check=True, capture_output=True)
    audio, rate = sf.read(wav, dtype="float32", always_2d=True)
    os.unlink(wav)
    audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        audio = soxr.resample(audio, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    audio = trim(audio)
    return audio * np.float32(spec["peak"] / max(float(np.abs(audio).max()), 1e-9))


def trim(audio: np.ndarray) -> np.ndarray:
    """Cut leading and trailing silence, keeping ``MARGIN_S`` seconds on both sides.

    Args:
        audio: 16 kHz mono audio.

    Returns:
        The audio from shortly before the first to shortly after the last 10 ms frame within
        ``TRIM_DB`` of the loudest one.
    """
    hop = SAMPLE_RATE // 100
    frames = len(audio) // hop
    rms = np.sqrt(np.mean(audio[: frames * hop].reshape(frames, hop) ** 2, axis=1) + 1e-12)
    loud = np.nonzero(20 * np.log10(rms / rms.max()) > -TRIM_DB)[0]
    margin = int(MARGIN_S * SAMPLE_RATE)
    start = max(loud[0] * hop - margin, 0)
    stop = min((loud[-1] + 1) * hop + margin, len(audio))
    return audio[start:stop]


def flac_bytes(audio: np.ndarray) -> bytes:
    """Encode audio as 16-bit FLAC at the strongest compression soundfile offers.

    Args:
        audio: 16 kHz mono float audio in [-1, 1].

    Returns:
        The FLAC file's bytes.
    """
    buf = io.BytesIO()
    sf.write(buf, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16", compression_level=1.0)
    return buf.getvalue()


def utterance(spec: dict, tmpdir: str) -> tuple[bytes, dict]:
    """One utterance as it is bundled: its FLAC bytes and its manifest record.

    Args:
        spec: one entry of :func:`plan`.
        tmpdir: a scratch directory.

    Returns:
        ``(flac, record)``; the record's ``audio_filepath`` is relative to the manifest.
    """
    audio = synthesise(spec, tmpdir)
    record = {"audio_filepath": spec["name"], "duration": round(len(audio) / SAMPLE_RATE, 4)}
    record.update({k: spec[k] for k in ("text", "engine", "voice", "rate", "pitch")})
    return flac_bytes(audio), record


def write_corpus(out: Path, specs: list[dict], jobs: int) -> list[tuple[dict, int]]:
    """Synthesise every spec and (re)write the FLAC files and manifests under ``out``.

    Args:
        out: the corpus directory (its old manifests and FLAC files are removed first).
        specs: the plan.
        jobs: synthesiser processes run at once.

    Returns:
        ``(record, flac size in bytes)`` per spec, in plan order.
    """
    for split in SPLITS:
        (out / f"{split}.jsonl").unlink(missing_ok=True)
        if (out / split).is_dir():
            for old in (out / split).glob("*.flac"):
                old.unlink()
        (out / split).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(jobs) as pool:
        made = list(pool.map(lambda s: utterance(s, tmp), specs))
    lines: dict[str, list[str]] = {s: [] for s in SPLITS}
    for spec, (data, record) in zip(specs, made):
        (out / spec["name"]).write_bytes(data)
        lines[spec["split"]].append(json.dumps(record))
    for split in SPLITS:
        (out / f"{split}.jsonl").write_text("\n".join(lines[split]) + "\n")
    return [(record, len(data)) for data, record in made]


def report(specs: list[dict], made: list[tuple[dict, int]]) -> str:
    """The corpus statistics as a table: utterances, voices, minutes and MB per split and
    engine.

    Args:
        specs: the plan.
        made: :func:`write_corpus`'s result.

    Returns:
        The table's text.
    """
    rows = ["     split     engine  utterances  voices  minutes  mean s  max s  MB audio"]
    for split in SPLITS:
        for engine in ENGINES:
            got = [(s, r, n) for s, (r, n) in zip(specs, made)
                   if s["split"] == split and s["engine"] == engine]  # fmt: skip
            if not got:
                continue
            seconds = [r["duration"] for _, r, _ in got]
            voices = len({s["voice"] for s, _, _ in got})
            rows.append(
                f"{split:>10} {engine:>10}  {len(got):10d}  {voices:6d}"
                f"  {sum(seconds) / 60:7.2f}  {np.mean(seconds):6.2f}  {max(seconds):5.2f}"
                f"  {sum(n for _, _, n in got) / 1e6:8.2f}"
            )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    """Generate the corpus into ``--out`` and print its statistics.

    Args:
        argv: the command line (``sys.argv[1:]`` when None).
    """
    here = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=here / "fctc" / "corpus")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--counts", nargs="*", default=[], metavar="SPLIT:ENGINE=N",
                        help="utterances of a split and engine, e.g. train:flite=300")  # fmt: skip
    parser.add_argument("--max-mb", type=float, default=40.0, help="fail above this size (MB)")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    counts = parse_counts(args.counts)
    info = provenance(args.seed, counts)
    specs = plan(args.seed, counts)
    for spec in specs:
        assert set(spec["text"]) <= set(CHARACTERS), spec["text"]
    made = write_corpus(args.out, specs, args.jobs)
    (args.out / "provenance.json").write_text(json.dumps(info, indent=1) + "\n")
    files = [p for p in args.out.rglob("*") if p.suffix in (".flac", ".jsonl", ".json")]
    total = sum(p.stat().st_size for p in files)
    print(f"{info['espeak-ng']}; {info['flite']}; seed {args.seed}")
    print(report(specs, made))
    seconds = sum(r["duration"] for r, _ in made)
    print(f"     total: {len(specs)} utterances, {seconds / 60:.2f} min, {total / 1e6:.2f} MB, "
          f"made in {time.perf_counter() - start:.0f} s with {args.jobs} jobs")  # fmt: skip
    if total > args.max_mb * 1e6:
        sys.exit(f"corpus is {total / 1e6:.2f} MB, over --max-mb {args.max_mb}")


if __name__ == "__main__":
    main()
