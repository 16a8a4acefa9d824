//! Build facts for `kubewire --version`: the commit and the compiler. No dependencies: the
//! commit comes from `KUBEWIRE_BUILD_COMMIT` (set it where the build has no `.git`, e.g. an
//! image build: `docker build --build-arg KUBEWIRE_BUILD_COMMIT=$(git rev-parse HEAD)`),
//! else from `git`, else it is `unknown` (a source tarball, a build context without `.git`).

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=KUBEWIRE_BUILD_COMMIT");
    let commit = std::env::var("KUBEWIRE_BUILD_COMMIT")
        .ok()
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=KUBEWIRE_COMMIT={commit}");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let rustc_version = run(&rustc, &["-V"]).unwrap_or_else(|| "rustc unknown".to_owned());
    println!("cargo:rustc-env=KUBEWIRE_RUSTC={rustc_version}");
}

/// The short commit of `HEAD`, and the files whose change means another commit (only those
/// that exist: a missing one would make cargo run this script on every build).
fn git_commit() -> Option<String> {
    let commit = run("git", &["rev-parse", "--short=12", "HEAD"])?;
    let mut watched = vec![run("git", &["rev-parse", "--git-path", "HEAD"])?];
    if let Some(branch) = run("git", &["symbolic-ref", "-q", "HEAD"]) {
        watched.extend(run("git", &["rev-parse", "--git-path", &branch]));
    }
    watched.extend(run("git", &["rev-parse", "--git-path", "packed-refs"]));
    for path in watched.iter().filter(|p| Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={path}");
    }
    Some(commit)
}

/// `program args` → its trimmed standard output, when it ran and succeeded.
fn run(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}
