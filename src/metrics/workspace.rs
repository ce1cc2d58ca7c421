//! The `workspace` label. On a workspace-enabled MLflow 3 the snapshot names experiments and
//! registered models `workspace/name` (their names are unique only inside a workspace), so
//! that counters, sticky folding, the series budget and the delivery history keep same-named ones
//! apart; here, as families are published, that name becomes two labels:
//! `workspace="team-b",experiment="exp"`. A folded value (`__other__`) has no workspace.

use super::family::TextFamily;

/// The label of a family whose value names a workspace's object: `experiment`, `model` or
/// `prompt`; for
/// the families by the team of a workspace's object ([`BY_TEAM_IN_WORKSPACE`]), `team`. Looked up
/// in a table made once: it is asked for every family published.
pub fn scoped_label(family: &str) -> Option<&'static str> {
    static TABLE: std::sync::OnceLock<std::collections::HashMap<&'static str, &'static str>> =
        std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t: std::collections::HashMap<_, _> = super::specs()
            .iter()
            .chain(super::delivery::HISTORY_SPECS)
            .chain(super::probes::SPECS)
            .filter_map(|s| {
                ["experiment", "model", "prompt"]
                    .into_iter()
                    .find(|l| s.labels.contains(l))
                    .map(|l| (s.name, l))
            })
            .collect();
        t.extend(BY_TEAM_IN_WORKSPACE.map(|f| (f, "team")));
        t
    });
    table.get(family).copied()
}

/// Whether a family counts people per workspace on a workspace-enabled MLflow 3 (users, teams):
/// a person active in two workspaces is in both, so their series must not be added up over
/// workspaces (the `mlflow_platform_*` families count the platform).
pub fn counts_people(family: &str) -> bool {
    super::adoption::PER_WORKSPACE
        .iter()
        .any(|s| s.name == family)
}

/// Whether a family's series carry a `workspace` label on a workspace-enabled MLflow 3: those
/// naming a workspace's object ([`scoped_label`]), the per-workspace people counts, the counts of
/// experiments and registered models, and sync errors. Without workspaces none has it.
pub fn labelled(family: &str) -> bool {
    scoped_label(family).is_some()
        || counts_people(family)
        || [
            super::inventory::EXPERIMENTS.name,
            super::inventory::REGISTERED_MODELS.name,
            "mlflow_exporter_sync_errors_total",
            "mlflow_exporter_trace_read_errors_total",
        ]
        .contains(&family)
}

/// Families by the team of a workspace's object (a prompt, or an experiment or a model created),
/// named `workspace/team` with workspaces.
const BY_TEAM_IN_WORKSPACE: [&str; 6] = [
    super::inventory::EXPERIMENTS_CREATED.name,
    super::inventory::MODELS_CREATED.name,
    super::inventory::PROMPTS.name,
    super::inventory::PROMPT_VERSIONS.name,
    super::inventory::PROMPTS_CREATED.name,
    super::inventory::PROMPT_VERSIONS_CREATED.name,
];

/// `family` with the `workspace/name` values of its scoped label split in two labels; families
/// without such a label as they are.
pub fn split(family: TextFamily) -> TextFamily {
    match scoped_label(family.name()) {
        Some(label) => {
            let text = split_text(family.text(), label);
            family.with_text(text)
        }
        None => family,
    }
}

/// As [`split`], from a borrowed family: a family with a scoped label gets a new text, the
/// others stay borrowed.
pub fn split_ref(family: &TextFamily) -> std::borrow::Cow<'_, TextFamily> {
    match scoped_label(family.name()) {
        Some(label) => {
            std::borrow::Cow::Owned(family.clone_with_text(split_text(family.text(), label)))
        }
        None => std::borrow::Cow::Borrowed(family),
    }
}

/// Rewrites every sample line of `text` whose `label` holds `ws/name` (`ws` a workspace name:
/// no `/`, `"` or `\`) to begin its labels with `workspace="ws"` and keep `label="name"`.
pub fn split_text(text: &[u8], label: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 8);
    for line in text.split_inclusive(|b| *b == b'\n') {
        match split_line(line, label.as_bytes()) {
            Some((open, ws, value_start)) => {
                out.extend_from_slice(&line[..=open]);
                out.extend_from_slice(b"workspace=\"");
                out.extend_from_slice(ws);
                out.extend_from_slice(b"\",");
                // The labels up to the value, then the value past `ws/`.
                out.extend_from_slice(&line[open + 1..value_start]);
                out.extend_from_slice(&line[value_start + ws.len() + 1..]);
            }
            None => out.extend_from_slice(line),
        }
    }
    out
}

/// In a sample line: the position of `{`, the workspace, and where `label`'s value starts.
fn split_line<'a>(line: &'a [u8], label: &[u8]) -> Option<(usize, &'a [u8], usize)> {
    if line.first() == Some(&b'#') {
        return None;
    }
    let open = line.iter().position(|b| *b == b'{')?;
    let mut at = open + 1;
    // Label pairs, in order: `name="value"`, values escaped (`\"`, `\\`, `\n`).
    while at < line.len() && line[at] != b'}' {
        let eq = at + line[at..].iter().position(|b| *b == b'=')?;
        let name = &line[at..eq];
        let start = eq + 2;
        let mut end = start;
        while end < line.len() && line[end] != b'"' {
            end += if line[end] == b'\\' { 2 } else { 1 };
        }
        if name == label {
            let value = &line[start..end.min(line.len())];
            let slash = value.iter().position(|b| *b == b'/')?;
            let ws = &value[..slash];
            if ws.is_empty() || ws.contains(&b'\\') {
                return None;
            }
            return Some((open, ws, start));
        }
        // Past the closing quote and a comma.
        at = end + 1;
        if line.get(at) == Some(&b',') {
            at += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str, label: &str) -> String {
        String::from_utf8(split_text(text.as_bytes(), label)).unwrap()
    }

    #[test]
    fn a_workspace_name_becomes_a_label_of_its_own() {
        let text = "# HELP x_total x/y\n# TYPE x_total counter\n\
            x_total{experiment=\"team-b/exp/1\",status=\"FINISHED\"} 3\n\
            x_total{status=\"KILLED\",experiment=\"default/a \\\"q\\\"\"} 1\n\
            x_total{experiment=\"__other__\",status=\"FAILED\"} 2\n\
            x_bucket{experiment=\"w/e\",le=\"+Inf\"} 2\n";
        assert_eq!(
            split(text, "experiment"),
            "# HELP x_total x/y\n# TYPE x_total counter\n\
            x_total{workspace=\"team-b\",experiment=\"exp/1\",status=\"FINISHED\"} 3\n\
            x_total{workspace=\"default\",status=\"KILLED\",experiment=\"a \\\"q\\\"\"} 1\n\
            x_total{experiment=\"__other__\",status=\"FAILED\"} 2\n\
            x_bucket{workspace=\"w\",experiment=\"e\",le=\"+Inf\"} 2\n"
        );
    }

    #[test]
    fn only_the_named_label_is_split() {
        let text = "m{team=\"a/b\",model=\"ws/m\"} 1\nm{team=\"a/b\",model=\"plain\"} 1\nm 2\n";
        assert_eq!(
            split(text, "model"),
            "m{workspace=\"ws\",team=\"a/b\",model=\"m\"} 1\nm{team=\"a/b\",model=\"plain\"} 1\nm 2\n"
        );
    }

    #[test]
    fn families_are_found_by_their_scoped_label() {
        assert_eq!(scoped_label("mlflow_runs_ended_total"), Some("experiment"));
        assert_eq!(scoped_label("mlflow_model_versions"), Some("model"));
        assert_eq!(scoped_label("mlflow_users"), None);
        assert_eq!(scoped_label("mlflow_probe_success"), Some("model"));
        assert_eq!(scoped_label("mlflow_probe_failures_total"), None);
    }
}
