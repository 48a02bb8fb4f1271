//! Runs every example (so `cargo test --workspace`, the host half of `cargo xtask test`, fails
//! when one does) and checks that the README's embedding snippet is the `embed` example, byte
//! for byte, so the snippet cannot rot.

#[path = "../examples/embed.rs"]
mod embed;

#[test]
fn example_embed_runs() {
    embed::main().expect("the embed example");
}

/// The first ```rust block under "## Embedding the crates" in the workspace README.
fn readme_snippet() -> String {
    let readme = include_str!("../../README.md");
    let section = readme
        .split_once("\n## Embedding the crates\n")
        .expect("README has the embedding section")
        .1;
    let block = section
        .split_once("```rust\n")
        .expect("the section has a rust block")
        .1;
    block
        .split_once("\n```\n")
        .expect("the block is closed")
        .0
        .to_string()
        + "\n"
}

#[test]
fn readme_embedding_snippet_is_the_embed_example() {
    let example = include_str!("../examples/embed.rs");
    let snippet = readme_snippet();
    if snippet != example {
        let line = snippet
            .lines()
            .zip(example.lines())
            .position(|(a, b)| a != b)
            .map_or(snippet.lines().count().min(example.lines().count()), |i| i);
        panic!(
            "README.md's embedding snippet differs from examples/examples/embed.rs from line {} on; \
             paste the example into the README",
            line + 1
        );
    }
}

#[path = "../examples/mapping.rs"]
mod mapping;

#[test]
fn example_mapping_runs() {
    mapping::main().expect("the mapping example");
}

#[path = "../examples/export.rs"]
mod export;

#[test]
fn example_export_runs() {
    export::main().expect("the export example");
}

#[path = "../examples/hypervisor.rs"]
mod hypervisor;

#[test]
fn example_hypervisor_runs() {
    hypervisor::main().expect("the hypervisor example");
}
