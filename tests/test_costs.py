"""The page's cost table: each part's minutes from the jobs' Snakemake benchmark files."""

from pathlib import Path

from supervised_sae.report.costs import cost_section, job_costs

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def benchmark(results: Path, inside: str, seconds: float) -> None:
    path = results / inside
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{seconds}\t0:00:00\t1\t1\t1\t1\t0\t0\t100\t{seconds}\n")


def study_benchmarks(results: Path) -> None:
    for draw in ("", "draw1/"):
        benchmark(results, f"{draw}benchmarks/train_lm.tsv", 600)
        benchmark(results, f"{draw}benchmarks/stage1/layer0.tsv", 30)
        benchmark(results, f"{draw}benchmarks/joint/layer0.tsv", 60)
        benchmark(results, f"{draw}benchmarks/unsupervised/layer0.tsv", 90)
        benchmark(results, f"{draw}benchmarks/evaluate/joint_layer0.tsv", 20)
        benchmark(results, f"{draw}benchmarks/evaluate/unsupervised_layer0.tsv", 40)
    benchmark(results, "sweep/k=8/benchmarks/joint/layer0.tsv", 60)
    benchmark(results, "sweep/k=8/benchmarks/evaluate/joint_layer0.tsv", 60)


def test_each_job_is_named_by_its_part_draw_and_sweep(tmp_path):
    study_benchmarks(tmp_path)
    (tmp_path / "draw1/benchmarks/probes").mkdir(parents=True)
    (tmp_path / "draw1/benchmarks/probes/layer0.tsv").write_text(HEADER)  # still running
    jobs = job_costs(tmp_path)
    assert len(jobs) == 14  # the half-written file is not a job yet
    lm = jobs[jobs["part"] == "LM training"]
    assert sorted(lm["draw"]) == ["", "draw1"] and lm["seconds"].sum() == 1200
    assert set(jobs[jobs["sweep"] == "k=8"]["part"]) == {"training: joint", "evaluation"}
    assert "training: unsupervised SAE" in set(jobs["part"])


def test_the_table_gives_minutes_per_part_per_draw_and_the_rest_of_the_span(tmp_path):
    study_benchmarks(tmp_path)
    text = "\n".join(cost_section(tmp_path, span_minutes=32.0))
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| part")}
    assert rows["LM training"] == "| LM training | 2 | 20.0 | 10.0 | 67% |"
    assert rows["evaluation"] == "| evaluation | 4 | 2.0 | 1.0 | 7% |"
    # the sweep is one part and has no per-draw figure (it runs on the first draw only)
    assert rows["L0 sweep (all its jobs)"] == "| L0 sweep (all its jobs) | 2 | 2.0 |  | 7% |"
    assert rows["all benchmarked jobs"].startswith("| all benchmarked jobs | 14 | 30.0 | 15.0 |")
    assert "take the other 2.0" in text
    # jobs side by side: 30 job-minutes in a 20-minute span
    overlapped = "\n".join(cost_section(tmp_path, span_minutes=20.0))
    assert "30.0 job-minutes in it (1.50 jobs at a time on average)" in overlapped
    assert "take the other" not in overlapped


def test_a_results_folder_without_benchmarks_has_no_cost_table(tmp_path):
    assert cost_section(tmp_path, span_minutes=None) == []
