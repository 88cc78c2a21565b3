#!/usr/bin/env bash
# `mome route` through the command line (docs/routing.md) on a small 3-domain corpus built here: Python code from
# the standard library, Perl modules of perl-base and the licence texts of /usr/share/common-licenses (English
# prose), all present on any Debian system. Checks: train with lr, svm and nb (held-out report, options echoed),
# `route segment`, predict from stdin and from a file (fields kept, label and probabilities added, identical
# outputs, deterministic retraining), the eval table and its --json form, accuracy on held-out segments, and bad
# input: invalid JSON lines (error naming the line, or skipped with --skip-invalid), missing text or label, an
# unknown label, corrupted / truncated / non-router files, usage errors (exit 2).
# Also --quiet and the label-noise filter (--clean-folds). SKIPs while the mome binary has no `route` verb.
source "$MOME_SOURCE_DIR/tests/lib/common.sh"

if ! "$MOME_BIN" route --help > /dev/null 2>&1; then
  echo "SKIP: $MOME_BIN has no 'route' verb yet"
  exit 0
fi
"$MOME_BIN" route --help | grep -q "usage: mome route train" || fail "mome route --help"

# ---- the corpus
src=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
perl_dir=$(dirname "$(perl -e 'use strict; print $INC{"strict.pm"}')")
mkdir -p dom/python dom/perl dom/legal
cp -r "$src"/email "$src"/json "dom/python/"
find "$perl_dir" -name '*.pm' -size -200k -exec cp {} dom/perl/ \;
for f in /usr/share/common-licenses/*; do [ -L "$f" ] || cp "$f" dom/legal/; done
"$MOME_BIN" data build --out corpus --vocab 300 --val-fraction 0.25 --domain python=dom/python \
  --domain perl=dom/perl --domain legal=dom/legal > data_build.log 2>&1 || { cat data_build.log; fail "data build"; }
pass "corpus: $(find dom/python -name '*.py' | wc -l) python, $(ls dom/perl | wc -l) perl, $(ls dom/legal | wc -l) legal files"

# ---- train the three classifiers
for k in lr svm nb; do
  "$MOME_BIN" route train --data corpus --out $k.h5 --classifier $k --buckets 65536 --ngrams 1-4 \
    > train_$k.log 2> train_$k.err || { cat train_$k.log train_$k.err; fail "route train $k"; }
  [ -f $k.h5 ] || fail "$k.h5 not written"
  grep -q "router written to $k.h5 ($k, 3 classes, 65536 buckets, n-grams 1-4)" train_$k.log ||
    { cat train_$k.log; fail "train summary line ($k)"; }
  grep -q "^held-out segments" train_$k.log || { cat train_$k.log; fail "held-out report ($k)"; }
  grep -q "^held-out whole documents" train_$k.log || { cat train_$k.log; fail "document report ($k)"; }
  grep -qE "^route: (lr|svm|nb) \((C|alpha) [0-9.e-]+\) trained on [0-9]+ texts" train_$k.err ||
    { cat train_$k.err; fail "progress lines ($k)"; }
done
ls *.tmp.* 2>/dev/null && fail "temporary files left behind"
pass "trained lr, svm and nb"
"$MOME_BIN" route train --data corpus --out quiet.h5 --quiet --classifier nb --buckets 4096 > quiet.log 2> quiet.err
[ ! -s quiet.err ] || { cat quiet.err; fail "--quiet still wrote to stderr"; }
"$MOME_BIN" route train --data corpus --out clean.h5 --buckets 4096 --clean-folds 2 --clean-threshold 0.2 \
  > clean.log 2> clean.err || { cat clean.err; fail "train --clean-folds"; }
grep -qE "^route: cleaning fold 2/2: [0-9]+ of [0-9]+ held-out texts" clean.err ||
  { cat clean.err; fail "cleaning folds"; }
grep -qE "^route: cleaning drops [0-9]+ texts" clean.err || { cat clean.err; fail "cleaning summary"; }
pass "--quiet, --clean-folds"

# ---- segments of the held-out documents
"$MOME_BIN" route segment --data corpus --split val --out val.jsonl 2> seg.err || { cat seg.err; fail "segment"; }
"$MOME_BIN" route segment --data corpus --split val --short > short.jsonl 2> /dev/null
"$PYTHON" - val.jsonl short.jsonl <<'PY' || fail "segment output"
import json, sys
labels = set()
for name, lo, hi in ((sys.argv[1], 50, 600), (sys.argv[2], 20, 49)):
    n = 0
    for line in open(name, encoding="utf-8"):
        o = json.loads(line)
        assert set(o) >= {"text", "label", "source"}, o.keys()
        b = len(o["text"].encode("utf-8"))
        assert lo <= b <= hi, (name, b, o["text"][:80])
        labels.add(o["label"])
        n += 1
    assert n > 10, (name, n)
assert labels == {"python", "perl", "legal"}, labels
PY
"$MOME_BIN" route segment --data corpus --split val --all 2> /dev/null > all.jsonl
[ "$(wc -l < all.jsonl)" -eq $(( $(wc -l < val.jsonl) + $(wc -l < short.jsonl) )) ] || fail "segment --all"
[ "$(grep -c '"short":true' all.jsonl)" -eq "$(wc -l < short.jsonl)" ] || fail "segment --all marks short texts"
pass "route segment: $(wc -l < val.jsonl) held-out segments, $(wc -l < short.jsonl) short texts"

# ---- predict: stdin and file, fields kept, probabilities
head -n 40 val.jsonl | "$PYTHON" -c '
import json, sys
for i, line in enumerate(sys.stdin):
    o = json.loads(line)
    print(json.dumps({"id": i, "text": o["text"], "gold": o["label"]}))' > in.jsonl
"$MOME_BIN" route predict lr.h5 < in.jsonl > pred_stdin.jsonl || fail "predict from stdin"
"$MOME_BIN" route predict lr.h5 in.jsonl > pred_file.jsonl || fail "predict from a file"
cmp -s pred_stdin.jsonl pred_file.jsonl || fail "stdin and file predictions differ"
"$PYTHON" - in.jsonl pred_file.jsonl <<'PY' || fail "predict output"
import json, sys
inp = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
out = [json.loads(l) for l in open(sys.argv[2], encoding="utf-8")]
assert len(inp) == len(out), (len(inp), len(out))
right = 0
for a, b in zip(inp, out):
    for k in a:
        assert a[k] == b[k], k            # every input field is kept
    p = b["probs"]
    assert set(p) == {"python", "perl", "legal"}, p
    assert abs(sum(p.values()) - 1) < 1e-4, p
    assert b["label"] == max(p, key=p.get), b
    right += b["label"] == a["gold"]
assert right >= 0.9 * len(inp), (right, len(inp))
PY
pass "predict: stdin == file, fields kept, probabilities sum to 1"
"$MOME_BIN" route train --data corpus --out lr2.h5 --buckets 65536 --ngrams 1-4 --quiet > /dev/null
"$MOME_BIN" route predict lr2.h5 in.jsonl | cmp -s - pred_file.jsonl || fail "retraining changed the predictions"
"$MOME_BIN" route train --data corpus --out lr3.h5 --buckets 65536 --ngrams 1-4 --seed 5 --quiet > /dev/null
"$MOME_BIN" route predict lr3.h5 in.jsonl | cmp -s - pred_file.jsonl && fail "--seed changed nothing"
pass "training is deterministic; --seed changes the hash"
printf '\n{"text": "sub parse { my ($self) = @_; return $self->{x}; }"}\n   \n' |
  "$MOME_BIN" route predict lr.h5 > blank.jsonl || fail "predict with blank lines"
[ "$(wc -l < blank.jsonl)" -eq 1 ] || fail "blank lines should be skipped"

# ---- eval: table and JSON
"$MOME_BIN" route eval lr.h5 val.jsonl > eval.txt || fail "eval"
num="[01]\.[0-9]{4}"
for pat in "^class +precision +recall +f1 +support$" "^python +$num +$num +$num +[0-9]+$" "^perl " "^legal " \
           "^macro avg " "^weighted avg " "^accuracy " "^confusion matrix" "^ +python +perl +legal$"; do
  grep -qE "$pat" eval.txt || { cat eval.txt; fail "eval output lacks /$pat/"; }
done
for k in lr svm nb; do
  "$MOME_BIN" route eval $k.h5 val.jsonl --json > eval_$k.json || fail "eval --json ($k)"
  "$PYTHON" - eval_$k.json $k val.jsonl <<'PY' || fail "eval --json content ($k)"
import json, sys
j = json.load(open(sys.argv[1]))
n = sum(1 for _ in open(sys.argv[3]))
assert j["classifier"] == sys.argv[2] and j["n"] == n, j
assert j["labels"] == ["python", "perl", "legal"], j["labels"]
assert sum(map(sum, j["confusion"])) == n
for c in j["labels"]:
    assert set(j["classes"][c]) == {"precision", "recall", "f1", "support"}
assert sum(j["classes"][c]["support"] for c in j["labels"]) == n
assert abs(j["macro"]["f1"] - sum(j["classes"][c]["f1"] for c in j["labels"]) / 3) < 1e-5
acc = sum(j["confusion"][i][i] for i in range(3)) / n
assert abs(acc - j["accuracy"]) < 1e-6
assert j["macro"]["f1"] >= 0.9, j["macro"]      # three easy domains
print(f"{sys.argv[2]}: held-out accuracy {j['accuracy']:.4f}, macro F1 {j['macro']['f1']:.4f} on {n} segments")
PY
done
"$MOME_BIN" route eval lr.h5 val.jsonl --errors 2 > errors.txt
pass "eval table, --json and --errors"

# ---- bad input
printf '{"text": "import os"}\n{"text": "print(1)"}\n{"text": oops}\n{"text": "x = 2"}\n' > bad.jsonl
rc=0; "$MOME_BIN" route predict lr.h5 bad.jsonl > part.jsonl 2> bad.err || rc=$?
[ $rc -eq 1 ] || fail "predict on an invalid line should exit 1, got $rc"
grep -q "bad.jsonl:3: invalid JSON" bad.err || { cat bad.err; fail "the error should name bad.jsonl:3"; }
[ "$(wc -l < part.jsonl)" -eq 2 ] || fail "the lines before the invalid one should be written"
"$MOME_BIN" route predict lr.h5 --skip-invalid < bad.jsonl > skip.jsonl 2> skip.err || fail "--skip-invalid"
[ "$(wc -l < skip.jsonl)" -eq 3 ] || fail "--skip-invalid should write the 3 valid lines"
grep -q "warning: skipped <stdin>:3" skip.err || { cat skip.err; fail "--skip-invalid warning"; }
pass "predict: invalid line stops with its number, or is skipped with a warning"
printf '{"text": "a"}\n{"txt": "b"}\n' > notext.jsonl
expect_fail "notext.jsonl:2: no string \"text\"" "$MOME_BIN" route predict lr.h5 notext.jsonl
printf '[1, 2]\n' > array.jsonl
expect_fail "array.jsonl:1: expected a JSON object" "$MOME_BIN" route predict lr.h5 array.jsonl
printf '{"text": "import os", "label": "python"}\n{"text": "use strict;", "label": "cobol"}\n' > badlabel.jsonl
expect_fail "badlabel.jsonl:2: label \"cobol\" is not a class of lr.h5 \(python, perl, legal\)" \
  "$MOME_BIN" route eval lr.h5 badlabel.jsonl
printf '{"text": "import os"}\n' > nolabel.jsonl
expect_fail "nolabel.jsonl:1: no string \"label\"" "$MOME_BIN" route eval lr.h5 nolabel.jsonl
printf '{"text": "import os", "label": "python"}\n{"text": "x", "label": "perl"\n' > badeval.jsonl
expect_fail "badeval.jsonl:2: invalid JSON" "$MOME_BIN" route eval lr.h5 badeval.jsonl
: > empty.jsonl
expect_fail "empty.jsonl: no labelled lines" "$MOME_BIN" route eval lr.h5 empty.jsonl
expect_fail "missing.jsonl: cannot open" "$MOME_BIN" route predict lr.h5 missing.jsonl

# routers: corrupted (bytes flipped in the middle: the weights), truncated, not HDF5, another HDF5 file, missing
size=$(stat -c %s lr.h5)
cp lr.h5 flipped.h5
"$PYTHON" - flipped.h5 <<'PY'
import sys
p = sys.argv[1]
data = bytearray(open(p, "rb").read())
for i in range(len(data) // 2, len(data) // 2 + 64):
    data[i] ^= 0x5A
open(p, "wb").write(data)
PY
expect_fail "flipped.h5" "$MOME_BIN" route predict flipped.h5 in.jsonl
head -c $((size / 2)) lr.h5 > truncated.h5
expect_fail "truncated.h5" "$MOME_BIN" route eval truncated.h5 val.jsonl
cp in.jsonl notrouter.h5
expect_fail "notrouter.h5" "$MOME_BIN" route predict notrouter.h5 in.jsonl
expect_fail "tokenizer.h5: format is \"mome-tokenizer\", expected \"mome-router\"" \
  "$MOME_BIN" route predict corpus/tokenizer.h5 in.jsonl
expect_fail "nosuch.h5" "$MOME_BIN" route eval nosuch.h5 val.jsonl
expect_fail "nosuchdir" "$MOME_BIN" route train --data nosuchdir --out x.h5
pass "bad routers refused with the file named"

# usage errors: exit 2
usage() {
  local rc=0
  "$MOME_BIN" route "$@" > /dev/null 2>&1 || rc=$?
  [ $rc -eq 2 ] || fail "mome route $* should exit 2, got $rc"
}
usage
usage frobnicate
usage train --out x.h5
usage train --data corpus
usage train --data corpus --out x.h5 --classifier forest
usage train --data corpus --out x.h5 --ngrams 3-1
usage train --data corpus --out x.h5 --ngrams 0-4
usage train --data corpus --out x.h5 --buckets 8
usage train --data corpus --out x.h5 --seed -1
usage train --data corpus --out x.h5 --C 0
usage train --data corpus --out x.h5 --clean-folds 1
usage train --data corpus --out x.h5 --bogus 1
usage predict
usage predict lr.h5 in.jsonl extra.jsonl
usage eval lr.h5
usage eval lr.h5 val.jsonl --errors many
usage segment --split test --data corpus
[ ! -e x.h5 ] || fail "a refused command wrote x.h5"
for sub in train predict eval segment; do
  "$MOME_BIN" route $sub --help | grep -q "usage: mome route" || fail "mome route $sub --help"
done
pass "usage errors exit 2; --help for every subcommand"
echo "route: all checks passed"
