"""Screenshots of the MLflow UI for docs/tracking.md, taken from a project's real run (its mlflow.db):
the experiment's runs table, one evaluated model's run page, the compare view of a method's sparsities
and the registered model's page. A headless Chromium (Debian's `chromium` package) driven by
Playwright, against `mlflow server` on 127.0.0.1.

    apt-get install chromium && .venv/bin/pip install playwright==1.65.2
    .venv/bin/python docs/screenshots/take.py --project . [--chromium /usr/bin/chromium]
"""
import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
TALL = {"run": 1450, "compare": 1300}  # pages whose numbers sit below the fold


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(project: Path, port: int) -> subprocess.Popen:
    db = project / "mlflow.db"
    if not db.exists():
        sys.exit(f"error: {db} does not exist; run the default first (`make run`) in {project}")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
                               "--host", "127.0.0.1", "--port", str(port)], cwd=project,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return server
        except OSError:
            time.sleep(1)
    server.kill()
    sys.exit("error: mlflow server did not answer within 120 s")


def pages(uri: str) -> dict[str, str]:
    """The UI routes to capture, found through the client: name -> URL fragment."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("fairprune")
    if experiment is None:
        sys.exit("error: no experiment `fairprune` in this store; run the default first")
    eid = experiment.experiment_id
    runs = client.search_runs([eid], max_results=1000, order_by=["attributes.start_time DESC"])
    evaluated = [r for r in runs if r.data.tags.get("mlflow.parentRunId") and r.info.run_name.startswith("magnitude-")
                 and r.info.run_name.endswith("-s0")]
    latest_parent = evaluated[0].data.tags["mlflow.parentRunId"]
    evaluated = sorted((r for r in evaluated if r.data.tags["mlflow.parentRunId"] == latest_parent),
                       key=lambda r: float(r.data.params.get("sparsity", 0)))
    shown = next(r for r in evaluated if r.info.run_name == "magnitude-0.9-s0")
    models = client.search_registered_models()
    compare = ",".join(f'"{r.info.run_id}"' for r in evaluated)
    urls = {
        "runs": f"#/experiments/{eid}/runs",
        "run": f"#/experiments/{eid}/runs/{shown.info.run_id}",
        "compare": f"#/compare-runs?runs=[{compare}]&experiments=[\"{eid}\"]",
    }
    if models:
        urls["model"] = f"#/models/{models[0].name}"
    return urls


def show_the_gap(page) -> None:
    """The compare view's parallel coordinates with the accuracy gap beside accuracy, and only the
    parameters that differ."""
    metrics = page.locator("text=Metrics:").locator("xpath=following::input[1]")
    metrics.click()
    metrics.fill("accuracy_gap")
    page.keyboard.press("Enter")
    page.keyboard.press("Escape")
    page.mouse.click(5, 5)  # closes the metric list
    page.get_by_role("switch").first.click()  # "Show diff only"
    page.wait_for_timeout(2000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=Path("."), help="a project folder with mlflow.db")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    port = free_port()
    server = start_server(args.project.resolve(), port)
    base = f"http://127.0.0.1:{port}/"
    try:
        urls = pages(base)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(base + urls["runs"], wait_until="load")
            page.wait_for_timeout(5000)
            page.get_by_text("Model training", exact=True).click()  # MLflow 3 opens on its GenAI view
            for name, fragment in urls.items():
                page.set_viewport_size({"width": 1440, "height": TALL.get(name, 1000)})
                page.goto(base + fragment, wait_until="load")
                page.wait_for_timeout(8000)  # the UI keeps polling (no network idle); its data and charts arrive by then
                close = page.get_by_role("button", name="Close")
                if close.count():  # the "MLflow Assistant" side panel
                    close.first.click()
                    page.wait_for_timeout(1000)
                if name == "compare":
                    show_the_gap(page)
                path = args.out / f"mlflow-{name}.png"
                page.screenshot(path=str(path))
                print(f"{path}: {base}{fragment}")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
