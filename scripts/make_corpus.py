#!/usr/bin/env python
"""Generate fctc's bundled spoken corpus: digit strings and short commands, spoken by espeak-ng.

Every utterance is a short English phrase (a digit sequence such as "three one four", a
command such as "turn on the lights", or a command with digits such as "dial five oh two")
spoken by one *voice*: an espeak-ng English base voice (an accent) combined with a voice
variant (a speaker: pitch range, formants, synthesiser), at a random speaking rate and pitch.
The audio is resampled from espeak-ng's 22050 Hz to 16 kHz mono, its leading and trailing
silence is trimmed, its peak level is drawn at random, and it is written as 16-bit FLAC.

The splits share no voice: for every variant, its combinations with the base voices are dealt
out so that train holds 6 of the 8, validation 1 and test 1, rotating which base goes where.
Every base voice and every variant is thus heard in training, but each validation and test
*voice* (base + variant) is new, so the test score measures generalisation to unseen speakers.

Everything is drawn from one seed (texts, voices, rates, pitches, gains), and espeak-ng is
deterministic, so the same seed and espeak-ng version give the same corpus byte for byte.

Output, for each split, ``<out>/<split>.jsonl`` (NeMo-style manifest lines with
``audio_filepath`` relative to the manifest, ``duration`` in seconds, ``text``, and the
``voice``, ``rate`` and ``pitch`` used) and the FLAC files under ``<out>/<split>/``.

Usage::

    apt-get install espeak-ng            # the synthesiser (Debian/Ubuntu package)
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000
SPLITS = ("train", "validation", "test")
UTTERANCE_SHARE = {"train": 0.70, "validation": 0.15, "test": 0.15}

# espeak-ng's English base voices (its "gmw" family; the mbrola voices need extra packages).
BASE_VOICES = (
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
VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7",
    "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "klatt4",
    "croak", "whisper",
    "Andy", "Annie", "belinda", "grandpa", "steph", "david",
)  # fmt: skip

DIGITS = ("zero", "oh", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_COUNTS = (1, 2, 3, 4)
DIGIT_COUNT_WEIGHTS = (0.2, 0.3, 0.3, 0.2)
COMMANDS = (
    "stop", "go", "go back", "go forward", "next", "previous", "play", "pause", "yes", "no",
    "left", "right", "up", "down", "cancel", "help", "mute", "repeat", "louder", "quieter",
    "start", "start again", "wake up", "go to sleep", "lights on", "lights off",
    "turn on the lights", "turn off the lights", "volume up", "volume down", "turn left",
    "turn right", "speed up", "slow down", "open the door", "close the door", "call home",
    "play music", "next song", "what time is it", "read my messages", "set an alarm",
    "show the map", "take a picture", "answer the call",
)  # fmt: skip
# Commands with digits: "{d}" is one digit word, "{ds}" two or three.
TEMPLATES = (
    "channel {d}", "floor {d}", "room {d}", "page {d}", "track {d}", "volume {d}",
    "dial {ds}", "call {ds}", "go to {d}",
)  # fmt: skip
KIND_WEIGHTS = {"digits": 0.45, "command": 0.40, "template": 0.15}

RATE_RANGE = (150, 220)  # words per minute (espeak-ng -s; its default is 175)
PITCH_RANGE = (25, 75)  # espeak-ng -p, 0..99 (default 50)
PEAK_RANGE = (0.2, 0.6)  # peak amplitude of the written audio
TRIM_DB = 40.0  # frames quieter than the loudest by this much count as silence
MARGIN_S = 0.04  # silence kept before the first and after the last loud frame

CHARACTERS = " abcdefghijklmnopqrstuvwxyz"


def split_voices(seed: int) -> dict[str, list[str]]:
    """Deal every (base, variant) voice to one split: per variant 6 train, 1 validation, 1 test.

    The validation and test bases rotate over the variants (a Latin-square pattern from a
    seeded permutation), so each base voice lends the same number of voices to each split.
    """
    rng = np.random.default_rng([seed, 1])
    bases = [BASE_VOICES[i] for i in rng.permutation(len(BASE_VOICES))]
    order = [VARIANTS[i] for i in rng.permutation(len(VARIANTS))]
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    n = len(bases)
    for j, variant in enumerate(order):
        for k, base in enumerate(bases):
            slot = (k - j) % n
            split = "validation" if slot == 0 else "test" if slot == 1 else "train"
            out[split].append(f"{base}+{variant}")
    return {s: sorted(v) for s, v in out.items()}


def make_text(rng: np.random.Generator) -> str:
    """One random utterance text: a digit sequence, a command, or a command with digits."""
    kinds = list(KIND_WEIGHTS)
    kind = kinds[rng.choice(len(kinds), p=list(KIND_WEIGHTS.values()))]

    def digits(n: int) -> str:
        return " ".join(DIGITS[i] for i in rng.integers(0, len(DIGITS), size=n))

    if kind == "digits":
        return digits(int(rng.choice(DIGIT_COUNTS, p=DIGIT_COUNT_WEIGHTS)))
    if kind == "command":
        return COMMANDS[rng.integers(len(COMMANDS))]
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    return template.format(d=digits(1), ds=digits(int(rng.integers(2, 4))))


def plan(seed: int, num_utterances: int) -> list[dict]:
    """The whole corpus as a list of utterance specs (split, name, voice, rate, pitch, text,
    peak), drawn from ``seed`` alone; within a split, voices take turns so each speaks about
    equally often."""
    voices = split_voices(seed)
    rng = np.random.default_rng([seed, 2])
    specs = []
    for split in SPLITS:
        count = round(num_utterances * UTTERANCE_SHARE[split])
        pool = list(voices[split])
        for i in range(count):
            if i % len(pool) == 0:
                rng.shuffle(pool)
            text = make_text(rng)
            specs.append(
                {
                    "split": split,
                    "name": f"{split}/{i:04d}.flac",
                    "voice": pool[i % len(pool)],
                    "rate": int(rng.integers(RATE_RANGE[0], RATE_RANGE[1] + 1)),
                    "pitch": int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
                    "peak": float(rng.uniform(*PEAK_RANGE)),
                    "text": text,
                }
            )
    return specs


def espeak_binary() -> str:
    """The espeak-ng executable, or exit with the package to install."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        sys.exit(
            "make_corpus.py needs the espeak-ng speech synthesiser, which was not found on PATH.\n"
            "Install it, e.g. on Debian/Ubuntu: apt-get install espeak-ng "
            "(macOS: brew install espeak-ng)."
        )
    return exe


def synthesise(exe: str, spec: dict, tmpdir: str) -> np.ndarray:
    """Speak one spec with espeak-ng and return 16 kHz float32 mono audio, trimmed and levelled."""
    wav = os.path.join(tmpdir, spec["name"].replace("/", "_") + ".wav")
    cmd = [exe, "-v", spec["voice"], "-s", str(spec["rate"]), "-p", str(spec["pitch"]),
           "-w", wav, spec["text"]]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    audio, rate = sf.read(wav, dtype="float32", always_2d=True)
    os.unlink(wav)
    audio = audio.mean(axis=1)
    audio = soxr.resample(audio, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    audio = trim(audio)
    return audio * np.float32(spec["peak"] / max(float(np.abs(audio).max()), 1e-9))


def trim(audio: np.ndarray) -> np.ndarray:
    """Cut leading and trailing silence (10 ms frames ``TRIM_DB`` below the loudest one),
    keeping ``MARGIN_S`` seconds on both sides."""
    hop = SAMPLE_RATE // 100
    frames = len(audio) // hop
    rms = np.sqrt(np.mean(audio[: frames * hop].reshape(frames, hop) ** 2, axis=1) + 1e-12)
    loud = np.nonzero(20 * np.log10(rms / rms.max()) > -TRIM_DB)[0]
    margin = int(MARGIN_S * SAMPLE_RATE)
    start = max(loud[0] * hop - margin, 0)
    stop = min((loud[-1] + 1) * hop + margin, len(audio))
    return audio[start:stop]


def flac_bytes(audio: np.ndarray) -> bytes:
    """16-bit FLAC at the strongest compression soundfile offers."""
    buf = io.BytesIO()
    sf.write(buf, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16", compression_level=1.0)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> None:
    """Generate the corpus into ``--out`` and print its statistics."""
    here = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=here / "fctc" / "corpus")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-utterances", type=int, default=1000)
    parser.add_argument("--max-mb", type=float, default=15.0, help="fail above this size (MB)")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)

    exe = espeak_binary()
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
    specs = plan(args.seed, args.num_utterances)
    for spec in specs:
        assert set(spec["text"]) <= set(CHARACTERS), spec["text"]

    out: Path = args.out
    for split in SPLITS:
        (out / f"{split}.jsonl").unlink(missing_ok=True)
        if (out / split).is_dir():
            for old in (out / split).glob("*.flac"):
                old.unlink()
        (out / split).mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        audios = list(pool.map(lambda s: synthesise(exe, s, tmp), specs))

    total_bytes = 0
    lines: dict[str, list[str]] = {s: [] for s in SPLITS}
    stats = {s: {"utterances": 0, "seconds": 0.0, "bytes": 0, "voices": set()} for s in SPLITS}
    for spec, audio in zip(specs, audios):
        data = flac_bytes(audio)
        (out / spec["name"]).write_bytes(data)
        duration = round(len(audio) / SAMPLE_RATE, 4)
        record = {
            "audio_filepath": spec["name"],
            "duration": duration,
            "text": spec["text"],
            "voice": spec["voice"],
            "rate": spec["rate"],
            "pitch": spec["pitch"],
        }
        lines[spec["split"]].append(json.dumps(record))
        st = stats[spec["split"]]
        st["utterances"] += 1
        st["seconds"] += duration
        st["bytes"] += len(data)
        st["voices"].add(spec["voice"])
        total_bytes += len(data)
    for split in SPLITS:
        path = out / f"{split}.jsonl"
        path.write_text("\n".join(lines[split]) + "\n")
        total_bytes += path.stat().st_size

    print(f"espeak-ng: {version}; seed {args.seed}")
    for split in SPLITS:
        st = stats[split]
        print(
            f"{split:>10}: {st['utterances']:5d} utterances, {len(st['voices']):3d} voices, "
            f"{st['seconds'] / 60:6.2f} min, mean {st['seconds'] / st['utterances']:.2f} s, "
            f"{st['bytes'] / 1e6:6.2f} MB audio"
        )
    seconds = sum(st["seconds"] for st in stats.values())
    print(
        f"     total: {len(specs)} utterances, {seconds / 60:.2f} min, "
        f"{total_bytes / 1e6:.2f} MB"
    )
    if total_bytes > args.max_mb * 1e6:
        sys.exit(f"corpus is {total_bytes / 1e6:.2f} MB, over --max-mb {args.max_mb}")


if __name__ == "__main__":
    main()
