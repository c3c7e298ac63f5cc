//! `streamrec plan --html`: the page from the command line (with a measured `run --trace`
//! timeline, and the flags it refuses), and the page in headless Chromium: it renders without
//! console errors, and selecting another algorithm (`#algo=NAME` drives the selector) changes
//! the view. Screenshots go to target/plan-view/; with STREAMREC_SAVE_SCREENSHOT=1 the
//! streamrec one is also copied to results/plan-view.png (the README's picture).
//!
//! Without Chromium the browser test passes and writes `...: skipped: ...` to stderr past the
//! harness's capture; STREAMREC_REQUIRE_BROWSER=1 (set by .ci/run, which installs Debian's
//! chromium) makes that a failure.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn streamrec(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_streamrec"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("streamrec runs")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn one_error_line(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "expected failure, stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    lines[0].to_string()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("streamrec-plan-html-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// The opening tags of the algorithm sections.
fn section_heads(page: &str) -> Vec<&str> {
    page.match_indices("<section class=\"algo\"")
        .map(|(i, _)| {
            let s = &page[i..];
            &s[..s.find('>').expect("tag closes")]
        })
        .collect()
}

fn shown_algos(page: &str) -> Vec<String> {
    section_heads(page)
        .into_iter()
        .filter(|h| !h.contains(" hidden"))
        .map(|h| {
            let v = &h[h.find("data-algo=\"").expect("data-algo") + 11..];
            v[..v.find('"').unwrap()].to_string()
        })
        .collect()
}

#[test]
fn plan_html_shows_a_measured_run_trace_beside_the_simulation() {
    let trace = tmp("tiny-trace.json");
    let page = tmp("tiny.html");
    ok(&streamrec(&[
        "run",
        "workloads/tiny.toml",
        "--backend",
        "cpu",
        "--algo",
        "streamrec",
        "--streams",
        "2",
        "--batch",
        "16",
        "--iters",
        "5",
        "--warmup",
        "1",
        "--trace",
        trace.to_str().unwrap(),
    ]));
    let out = ok(&streamrec(&[
        "plan",
        "workloads/tiny.toml",
        "--device",
        "cpu",
        "--algo",
        "streamrec",
        "--streams",
        "2",
        "--batch",
        "16",
        "--html",
        page.to_str().unwrap(),
        "--trace",
        trace.to_str().unwrap(),
    ]));
    assert!(out.starts_with("wrote "), "{out}");
    assert!(out.contains("request"), "{out}");
    let html = std::fs::read_to_string(&page).unwrap();
    let sections = section_heads(&html).len();
    assert_eq!(sections, 6);
    assert_eq!(shown_algos(&html), ["streamrec"]);
    assert_eq!(html.matches("data-laneset=\"measured\"").count(), sections);
    // One request: every op of tiny once per measured lane set.
    let first = &html[html.find("<section class=\"algo\"").unwrap()..];
    let first = &first[..first.find("</section>").unwrap()];
    let ops = first.matches("<g class=\"op\"").count();
    assert!(ops >= 8, "{ops}");
    assert_eq!(html.matches(" data-span=\"").count(), ops * sections);
}

#[test]
fn plan_html_refuses_what_cannot_apply() {
    let page = tmp("refused.html");
    let p = page.to_str().unwrap();
    // --trace needs --html; --html is neither --dot nor --compare.
    for args in [
        vec!["plan", "workloads/tiny.toml", "--trace", "t.json"],
        vec!["plan", "workloads/tiny.toml", "--html", p, "--dot"],
        vec!["plan", "workloads/tiny.toml", "--html", p, "--compare"],
    ] {
        let o = streamrec(&args);
        assert!(!o.status.success(), "{args:?}");
        assert!(!String::from_utf8_lossy(&o.stderr).contains("panicked"));
    }
    let missing = tmp("missing.json");
    let line = one_error_line(&streamrec(&[
        "plan",
        "workloads/tiny.toml",
        "--html",
        p,
        "--trace",
        missing.to_str().unwrap(),
    ]));
    assert!(
        line.contains("--trace") && line.contains("missing.json"),
        "{line}"
    );
    let not_trace = tmp("not-a-trace.json");
    std::fs::write(&not_trace, "{\"hello\": 1}").unwrap();
    let line = one_error_line(&streamrec(&[
        "plan",
        "workloads/tiny.toml",
        "--html",
        p,
        "--trace",
        not_trace.to_str().unwrap(),
    ]));
    assert!(
        line.contains("--trace") && line.contains("traceEvents"),
        "{line}"
    );
    let line = one_error_line(&streamrec(&[
        "plan",
        "workloads/tiny.toml",
        "--html",
        p,
        "--fuse",
        "0",
    ]));
    assert!(line.contains("--fuse"), "{line}");
    assert!(!page.exists(), "nothing written on a refusal");
}

fn skip(what: &str) {
    common::skip("STREAMREC_REQUIRE_BROWSER", what);
}

/// `CHROMIUM` when set (nothing when it names no file), else `chromium` on PATH or in /usr/bin.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("chromium"))
        .chain([PathBuf::from("/usr/bin/chromium")])
        .find(|p| p.is_file())
}

/// The page's console messages in the browser's log (`...:INFO:CONSOLE:12] "...", source: ...`;
/// Chromium logs console.error and uncaught exceptions at the same level as console.log). The
/// page logs nothing, so every one is a failure.
fn console_messages(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(":CONSOLE")).collect()
}

/// Width and height of a PNG.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(
        png.len() > 24 && png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "a PNG"
    );
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&png[16..20]), be(&png[20..24]))
}

#[test]
fn the_page_renders_in_headless_chromium_and_the_selector_switches_the_view() {
    let Some(browser) = chromium() else {
        skip("no Chromium (apt-get install chromium)");
        return;
    };
    let dir = root().join("target/plan-view");
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("streamrec-26.html");
    ok(&streamrec(&[
        "plan",
        "workloads/streamrec-26.toml",
        "--algo",
        "auto",
        "--streams",
        "4",
        "--batch",
        "128",
        "--html",
        page.to_str().unwrap(),
    ]));
    let html = std::fs::read_to_string(&page).unwrap();
    assert_eq!(shown_algos(&html), ["auto"], "--algo picks the first view");

    let mut shots = Vec::new();
    for algo in ["single", "streamrec"] {
        let png = dir.join(format!("{algo}.png"));
        let dom = dir.join(format!("{algo}.dom.html"));
        let _ = std::fs::remove_file(&png);
        let url = format!("file://{}#algo={algo}", page.display());
        let o = Command::new("bash")
            .arg(root().join("tests/browser/render.sh"))
            .args([url.as_str(), png.to_str().unwrap(), dom.to_str().unwrap()])
            .env("CHROMIUM", &browser)
            .output()
            .expect("bash runs");
        let log = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "render.sh {url}: {:?}\n{log}", o.status);
        let console = console_messages(&log);
        assert!(console.is_empty(), "{algo}: console messages: {console:#?}");
        let dom = std::fs::read_to_string(&dom).unwrap();
        assert!(dom.contains("data-ready=\"1\""), "{algo}: the script ran");
        assert!(
            dom.contains("data-errors=\"0\""),
            "{algo}: no script errors"
        );
        assert!(
            dom.contains(&format!("data-shown=\"{algo}\"")),
            "{algo}: the selector switched"
        );
        assert_eq!(shown_algos(&dom), [algo], "{algo}: one section shown");
        assert!(
            dom.contains(&format!("<tr data-algo=\"{algo}\" class=\"selected\"")),
            "{algo}: its table row is selected"
        );
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(png_size(&bytes), (1600, 1700), "{algo}");
        shots.push((algo, png, bytes));
    }
    assert_ne!(
        shots[0].2, shots[1].2,
        "switching the algorithm changes what is drawn"
    );
    if std::env::var("STREAMREC_SAVE_SCREENSHOT").is_ok_and(|v| v == "1") {
        std::fs::copy(&shots[1].1, root().join("results/plan-view.png")).unwrap();
    }
    let _ = writeln!(
        std::io::stderr().lock(),
        "browser: {} rendered {} and {} without console errors: {}, {}",
        browser.display(),
        shots[0].0,
        shots[1].0,
        shots[0].1.display(),
        shots[1].1.display()
    );
}
