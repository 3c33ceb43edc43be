"""`corpus lineage` in the terminal: one record's chain as a tree, newest artifact at the top."""

from __future__ import annotations

from rich.markup import escape
from rich.tree import Tree


def _sample_line(row: dict) -> str:
    hinted = "hinted" if row.get("hinted") else "not hinted"
    leak = ""
    if row.get("source") == "regenerated":
        leak = f", leaked {row.get('leaked')}" + (f" ({row['leak_rule']})" if row.get("leak_rule") else "")
    return (f"{row['source']} {row['sample_id']}: generator {row.get('generator')}, seed {row.get('seed')}, "
            f"k {row.get('k_index')}, {hinted}, predicted {row.get('predicted')!r} (correct {row.get('correct')}, "
            f"{row.get('parse_status')}){leak} -> {row.get('verdict')}")


def render_chain(chain: dict) -> Tree:
    question = chain["question"]
    tree = Tree(f"[bold]{escape(chain['query'])}[/] ({chain['kind']}; rounds {', '.join(map(str, chain['rounds']))})")
    records = tree.add(f"{len(chain['records'])} record(s)")
    for record in chain["records"]:
        node = records.add(f"{record['kind']} {record['id']} (round {record['round']}, "
                           f"data/rounds/{record['round']}/{record['kind']}.jsonl)")
        for side, rows in record["sides"].items():
            side_node = node.add(f"{side}: {len(rows)} sample row(s)" + ("" if rows else " [red]UNTRACED[/]"))
            for row in rows:
                side_node.add(escape(_sample_line(row)))
    if chain.get("samples_of_question") is not None:
        node = tree.add(f"{len(chain['samples_of_question'])} sample row(s) of the question")
        for row in chain["samples_of_question"]:
            node.add(escape(_sample_line(row)))
    q = tree.add(f"question {question['id']}: {question['task']}, split {question['split']}, answer "
                 f"{escape(str(question['answer']))!s}, label convention {question['label_convention']}, "
                 f"template {question['template_hash']}")
    if chain.get("cohort"):
        c = chain["cohort"]
        q.add(f"cohort row ({c['cohort_file']}): subject {c['subject_id']}, admission {c['hadm_id']}, "
              f"visit index {c['visit_index']}, label {c['label']}, convention {c['cohort_label_convention']}")
    elif chain.get("registry"):
        r = chain["registry"]
        q.add(f"registry row ({r['registry_file']}): stay {r['subject_id']}, hidden feature {r['feature']} = "
              f"{r['masked_value']}")
    else:
        q.add("[red]no cohort or registry row found[/]")
    sources = chain["sources"]
    s = tree.add(f"source {escape(sources['source'])} (dvc.lock md5 {sources.get('source_lock_md5')})")
    if "ingest_report" in sources:
        report = sources["ingest_report"]
        s.add(f"ingest report {report['file']}: rows excluded {report.get('rows_excluded')}, "
              f"invalid values {report.get('invalid_values')}")
        for table in sources["tables"]:
            s.add(f"{table['table']}: {escape(str(table['source_file']))} md5 {table['md5']}, "
                  f"rows read {table['rows_read']}, written {table['rows_written']}")
    for item in sources.get("files", []):
        s.add(f"{escape(item['file'])} md5 {item['md5']}")
    a = tree.add("dvc.lock")
    for art in chain["artifacts"]:
        state = {True: "matches work tree", False: "[red]work tree differs[/]", None: "not checked"}[art["matches_lock"]]
        a.add(f"{art['path']}: {art['md5']} ({art['stage']}; {state})")
    return tree
