//! The configuration examples in the README are valid: a reader who copies one gets a
//! config kubewire accepts. (The shipped config/kubewire.yaml is checked by a unit test.)

use kubewire::config::{Config, Format};

/// The ```yaml blocks of a markdown file.
fn yaml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```yaml") => current = Some(String::new()),
            (Some(_), l) if l.starts_with("```") => blocks.push(current.take().unwrap()),
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

#[test]
fn every_readme_yaml_example_loads_and_validates() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let blocks = yaml_blocks(&readme);
    assert!(
        blocks.len() >= 3,
        "expected the README's config examples, found {}",
        blocks.len()
    );
    for block in blocks {
        // Sink-only snippets are shown on their own; give them a resource to watch.
        let text = if block.contains("resources:") {
            block.clone()
        } else {
            format!("resources:\n  - resource: configmaps\n{block}")
        };
        let config =
            Config::from_str_with_env(&text, Format::Yaml, std::iter::empty::<(&str, &str)>())
                .unwrap_or_else(|e| panic!("README example does not load: {e}\n{block}"));
        let problems = config.validate();
        assert!(
            problems.is_empty(),
            "README example invalid: {problems:?}\n{block}"
        );
    }
}
