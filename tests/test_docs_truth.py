"""The docs name only what exists: param keys, `cpsl` subcommands and flags, repository paths (tests/docs_truth.py)."""
from __future__ import annotations

from docs_truth import ROOT, doc_files, scan_docs, scan_text

PLANTED = """\
Set `cp.etaa: 0.3` or `train.nproc: 2`, then run `cpsl report --nope` and `cpsl frobnicate`.
See `src/cpsl/no_such_module.py`, `tests/test_docs_params.py::test_no_such_test` and [the guide](docs/nope.md).

```bash
dvc exp run -S cp.etta=0.3
python -m cpsl.cli train --ablation A6 --sed 0
```
"""

TRUE = """\
`cp.eta`, `train.lr_new_modules: 1e-3`, `baselines.<name>.{mosi,mosei}`, `demo.seed/videos`, `execution.download.*`,
`demo.train.lr`, `cpsl report --table1 --grid`, `cpsl <stage> --set cp.eta=0.3`, `cpsl --version`,
`cpsl train: error: a message, not a command --whatever`, `...; cpsl never writes through a link`,
`src/cpsl/baselines/<name>/spec.py`, `tests/train_helpers.planted_caches`, `tests/test_docs_truth.py::test_the_…`,
`data/processed/demo.h5`, `cpsl.nn.zoo`, [params](docs/params.md), [web](https://example.org/docs/x.md).

```bash
dvc exp run -S cp.eta=0.3 -S 'ablations=[A6,T0]'
torchrun --nproc_per_node 4 -m cpsl.cli train --ablation A6 --seed 0
```
| `--set cp.eta.x=1` | `override key 'cp.eta.x': 'cp.eta' is a value, not a section` |
"""


def test_the_docs_name_only_what_exists():
    assert len(doc_files()) >= 8
    offenders = scan_docs()
    assert not offenders, "false mentions in the docs:\n" + "\n".join(map(str, offenders))


def test_every_planted_false_mention_is_caught():
    found = {(o.kind, o.text) for o in scan_text(PLANTED, "planted.md", ROOT)}
    assert found == {
        ("param", "cp.etaa"), ("param", "train.nproc"), ("param", "cp.etta"),
        ("command", "cpsl report --nope"), ("command", "cpsl frobnicate"), ("command", "cpsl train --sed"),
        ("path", "src/cpsl/no_such_module.py"), ("path", "tests/test_docs_params.py::test_no_such_test"),
        ("link", "docs/nope.md"), ("path", "docs/nope.md"),
    }


def test_true_mentions_in_every_supported_form_pass():
    assert scan_text(TRUE, "true.md", ROOT) == []


def test_an_offender_names_file_line_and_why():
    (offender,) = scan_text("intro\n\nsee `cpsl report --nope`\n", "README.md", ROOT)
    assert str(offender) == "README.md:3: command 'cpsl report --nope': no such option of cpsl report"
