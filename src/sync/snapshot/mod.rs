//! The in-memory picture of MLflow that metrics are derived from: experiments, compact run records,
//! registered models with their aliases, and model versions. Strings are interned so that a run costs
//! well under 300 bytes however many tags it carried.

use std::collections::{BTreeMap, HashMap};

use hashbrown::hash_table::{Entry, HashTable};
use std::num::NonZeroU32;
use std::sync::Arc;

/// An interned string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sym(NonZeroU32);

impl Sym {
    /// Dense index, for tables indexed by symbol.
    pub fn index(self) -> usize {
        self.0.get() as usize
    }
}

/// String table, and a table of the combinations of extra-label values runs carry (few distinct
/// ones, so a run holds a 4-byte id instead of its own list). Both live as long as the snapshot.
#[derive(Debug, Clone)]
pub struct Interner {
    /// foldhash: a lookup per string field of every run read.
    map: hashbrown::HashMap<Arc<str>, Sym>,
    strings: Vec<Arc<str>>,
    combo_map: hashbrown::HashMap<Arc<[Option<Sym>]>, u32>,
    combos: Vec<Arc<[Option<Sym>]>>,
}

impl Default for Interner {
    fn default() -> Self {
        Interner {
            map: hashbrown::HashMap::new(),
            // Index 0 is never handed out, so that `Option<Sym>` costs no more than `Sym`.
            strings: vec![Arc::from("")],
            combo_map: hashbrown::HashMap::new(),
            combos: Vec::new(),
        }
    }
}

impl Interner {
    pub fn intern(&mut self, s: &str) -> Sym {
        if let Some(&sym) = self.map.get(s) {
            return sym;
        }
        let idx = u32::try_from(self.strings.len()).expect("fewer than 2^32 distinct strings");
        let sym = Sym(NonZeroU32::new(idx).expect("index 0 is reserved"));
        let arc: Arc<str> = Arc::from(s);
        self.strings.push(arc.clone());
        self.map.insert(arc, sym);
        sym
    }

    pub fn lookup(&self, s: &str) -> Option<Sym> {
        self.map.get(s).copied()
    }

    pub fn get(&self, sym: Sym) -> &str {
        &self.strings[sym.index()]
    }

    /// One past the largest symbol index.
    pub fn len(&self) -> usize {
        self.strings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.strings.len() <= 1
    }

    /// The id of a combination of extra-label values.
    pub fn intern_combo(&mut self, values: &[Option<Sym>]) -> u32 {
        if let Some(&id) = self.combo_map.get(values) {
            return id;
        }
        let id = self.combos.len() as u32;
        let arc: Arc<[Option<Sym>]> = Arc::from(values);
        self.combos.push(arc.clone());
        self.combo_map.insert(arc, id);
        id
    }

    /// The values of a combination; empty for an id never handed out.
    pub fn combo(&self, id: u32) -> &[Option<Sym>] {
        self.combos.get(id as usize).map_or(&[], |c| c)
    }

    /// One past the largest combination id.
    pub fn combos(&self) -> usize {
        self.combos.len()
    }

    /// Takes in the strings and combinations of another table (a page's, built off the sync task)
    /// and says what its symbols and combination ids are called here.
    pub fn absorb(&mut self, other: &Interner) -> Remap {
        // Index 0 is never a symbol.
        let syms: Vec<Sym> = other.strings[1..].iter().map(|s| self.intern(s)).collect();
        let combos = other
            .combos
            .iter()
            .map(|c| {
                let values: Vec<Option<Sym>> =
                    c.iter().map(|v| v.map(|v| syms[v.index() - 1])).collect();
                self.intern_combo(&values)
            })
            .collect();
        Remap { syms, combos }
    }
}

/// Symbols and combination ids of an absorbed [`Interner`], by their old index (symbols from 1).
#[derive(Debug)]
pub struct Remap {
    syms: Vec<Sym>,
    combos: Vec<u32>,
}

impl Remap {
    pub fn sym(&self, s: Sym) -> Sym {
        self.syms[s.index() - 1]
    }

    /// Renames the symbols of an experiment record made with the absorbed table.
    pub fn experiment(&self, e: &mut ExperimentRecord) {
        e.name = self.sym(e.name);
        e.team = e.team.map(|s| self.sym(s));
        e.workspace = e.workspace.map(|s| self.sym(s));
    }

    /// Renames the symbols of a model record made with the absorbed table.
    pub fn model(&self, m: &mut ModelRecord) {
        for (alias, _) in &mut m.aliases {
            *alias = self.sym(*alias);
        }
        m.team = m.team.map(|s| self.sym(s));
        m.workspace = m.workspace.map(|s| self.sym(s));
    }

    /// Renames the symbols of a version record made with the absorbed table.
    pub fn version(&self, v: &mut VersionRecord) {
        v.stage = self.sym(v.stage);
        v.status = self.sym(v.status);
    }

    /// Renames the symbols of a record made with the absorbed table.
    pub fn run(&self, r: &mut RunRecord) {
        let opt = |s: Option<Sym>| s.map(|s| self.sym(s));
        r.experiment = self.sym(r.experiment);
        r.user = opt(r.user);
        r.team = opt(r.team);
        r.instance_type = opt(r.instance_type);
        r.extra = self.combos[r.extra as usize];
    }
}

/// A run's status as MLflow reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum RunStatus {
    Running,
    Scheduled,
    Finished,
    Failed,
    Killed,
    Unknown,
}

impl RunStatus {
    /// The statuses MLflow defines, in the order they are exported.
    pub const ALL: [RunStatus; 5] = [
        RunStatus::Running,
        RunStatus::Scheduled,
        RunStatus::Finished,
        RunStatus::Failed,
        RunStatus::Killed,
    ];
    pub const ENDED: [RunStatus; 3] = [RunStatus::Finished, RunStatus::Failed, RunStatus::Killed];

    pub fn parse(s: &str) -> RunStatus {
        match s {
            "RUNNING" => RunStatus::Running,
            "SCHEDULED" => RunStatus::Scheduled,
            "FINISHED" => RunStatus::Finished,
            "FAILED" => RunStatus::Failed,
            "KILLED" => RunStatus::Killed,
            _ => RunStatus::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "RUNNING",
            RunStatus::Scheduled => "SCHEDULED",
            RunStatus::Finished => "FINISHED",
            RunStatus::Failed => "FAILED",
            RunStatus::Killed => "KILLED",
            RunStatus::Unknown => "UNKNOWN",
        }
    }

    pub fn is_ended(self) -> bool {
        matches!(
            self,
            RunStatus::Finished | RunStatus::Failed | RunStatus::Killed
        )
    }
}

/// A run id: MLflow's 32 hex digits packed into 128 bits (a hash for any other form).
pub type RunKey = u128;

pub fn run_key(run_id: &str) -> RunKey {
    if is_hex_run_id(run_id) {
        if let Ok(k) = u128::from_str_radix(run_id, 16) {
            return k;
        }
    }
    // Not MLflow's format: two independent 64-bit hashes (the record says so: `RunRecord::hashed_id`).
    use std::hash::{BuildHasher, Hasher};
    let h = |seed: u64| {
        let mut s =
            std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
                .build_hasher();
        s.write_u64(seed);
        s.write(run_id.as_bytes());
        s.finish()
    };
    u128::from(h(1)) << 64 | u128::from(h(2))
}

/// True when `run_key` packed the id itself, so that `run_id` gives it back.
pub fn is_hex_run_id(run_id: &str) -> bool {
    run_id.len() == 32 && run_id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The MLflow run id of a key packed from hex.
pub fn run_id(key: RunKey) -> String {
    format!("{key:032x}")
}

/// Marks an absent timestamp.
pub const NO_TIME: i64 = i64::MIN;

/// What is kept of one run: only what metrics need.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// Start, ms since the epoch, or [`NO_TIME`].
    pub start_ms: i64,
    /// End, ms since the epoch, or [`NO_TIME`].
    pub end_ms: i64,
    /// The experiment's id.
    pub experiment: Sym,
    pub user: Option<Sym>,
    /// The run's own team tag; the experiment's applies when absent.
    pub team: Option<Sym>,
    pub instance_type: Option<Sym>,
    /// Values of the configured extra labels, as a combination id of the [`Interner`].
    pub extra: u32,
    /// Latest values of the configured quality metrics, in their order (NaN when not logged); empty
    /// when the run logged none of them.
    pub quality: Box<[f64]>,
    /// Mean of the latest `system/…gpu_{i}_utilization_percentage` values, in percent; NaN when none.
    pub gpu_util_pct: f64,
    /// Configured features the run uses, one bit each (the registry feature is derived, not stored).
    pub features: u32,
    /// Index of the matching rate in the rate card, or [`NO_RATE`].
    pub rate: u16,
    /// Distinct GPUs seen in the run's `system/…gpu_{i}_*` metric keys.
    pub gpus_logged: u16,
    pub status: RunStatus,
    pub deleted: bool,
    /// The key is a hash of an id not in MLflow's hex form: `run_id(key)` cannot give it back.
    pub hashed_id: bool,
    /// The tally's bookkeeping of this run (`crate::tally`), not MLflow's data: the compute time
    /// counted so far, and what else was counted (its `counted` bits). Kept when MLflow's newer
    /// record of the run replaces this one, so that nothing is counted twice.
    pub counted_ms: u64,
    pub counted: u8,
}

/// No rate of the card matched: the default hourly rate applies.
pub const NO_RATE: u16 = u16::MAX;

impl RunRecord {
    /// A run of `experiment` with `status` and times, nothing else known (no user, tags or metrics).
    pub fn new(experiment: Sym, status: RunStatus, start_ms: i64, end_ms: i64) -> RunRecord {
        RunRecord {
            start_ms,
            end_ms,
            experiment,
            user: None,
            team: None,
            instance_type: None,
            extra: 0,
            quality: Box::new([]),
            gpu_util_pct: f64::NAN,
            features: 0,
            rate: NO_RATE,
            gpus_logged: 0,
            status,
            deleted: false,
            hashed_id: false,
            counted_ms: 0,
            counted: 0,
        }
    }

    /// Milliseconds of compute: end − start once ended, now − start while running, else 0.
    pub fn compute_ms(&self, now_ms: i64) -> u64 {
        if self.start_ms == NO_TIME {
            return 0;
        }
        let end = match self.status {
            s if s.is_ended() && self.end_ms != NO_TIME => self.end_ms,
            RunStatus::Running => now_ms,
            _ => return 0,
        };
        end.saturating_sub(self.start_ms).max(0) as u64
    }

    /// Duration of an ended run, when MLflow recorded both ends.
    pub fn duration_ms(&self) -> Option<u64> {
        (self.status.is_ended() && self.start_ms != NO_TIME && self.end_ms != NO_TIME)
            .then(|| self.end_ms.saturating_sub(self.start_ms).max(0) as u64)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentRecord {
    /// Its name; on a server with workspaces, `workspace/name` (names are unique only inside a
    /// workspace).
    pub name: Sym,
    /// The workspace it belongs to, on a server with workspaces.
    pub workspace: Option<Sym>,
    pub deleted: bool,
    pub team: Option<Sym>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelRecord {
    /// `(alias, version)`, as MLflow lists them.
    pub aliases: Vec<(Sym, u32)>,
    /// The model's own team tag.
    pub team: Option<Sym>,
    /// The workspace it belongs to, on a server with workspaces (its key is then
    /// `workspace/name`).
    pub workspace: Option<Sym>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VersionRecord {
    /// Legacy stage; `None` when unset.
    pub stage: Sym,
    pub status: Sym,
    pub created_ms: i64,
    pub last_updated_ms: i64,
    /// The run that produced the version, when MLflow knows it.
    pub run: Option<RunKey>,
    /// The logged model (MLflow 3) it was registered from.
    pub logged_model: Option<Box<str>>,
}

/// A logged model's status, as MLflow 3 reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LoggedStatus {
    Pending,
    Ready,
    FailedUpload,
}

impl LoggedStatus {
    pub const ALL: [LoggedStatus; 3] = [
        LoggedStatus::Pending,
        LoggedStatus::Ready,
        LoggedStatus::FailedUpload,
    ];

    /// MLflow's `LOGGED_MODEL_*` names (and the short ones); unknown ones are pending.
    pub fn parse(s: &str) -> LoggedStatus {
        match s.strip_prefix("LOGGED_MODEL_").unwrap_or(s) {
            "READY" => LoggedStatus::Ready,
            "UPLOAD_FAILED" | "FAILED_UPLOAD" => LoggedStatus::FailedUpload,
            _ => LoggedStatus::Pending,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LoggedStatus::Pending => "PENDING",
            LoggedStatus::Ready => "READY",
            LoggedStatus::FailedUpload => "FAILED_UPLOAD",
        }
    }
}

/// A logged model (MLflow 3): a model logged from a run or an app, before any registration.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedModelRecord {
    /// The experiment's id.
    pub experiment: Sym,
    /// Its name (several logged models may share one).
    pub name: Sym,
    pub status: LoggedStatus,
    /// Ms since the epoch, or [`NO_TIME`].
    pub created_ms: i64,
}

/// Runs by id: the records sit in one vector and a hash table holds only their 4-byte positions
/// (hashed through the key they point at), so a run costs its record, its key and about 10 bytes of
/// index rather than a record-sized slot in a half-empty table.
#[derive(Debug, Clone, Default)]
pub struct Runs {
    index: HashTable<u32>,
    keys: Vec<RunKey>,
    records: Vec<RunRecord>,
}

/// Run ids are random hex (or already hashes), so mixing the halves once spreads them well enough;
/// the multiply keeps sequential ids from sharing the table's control bits.
fn hash(key: RunKey) -> u64 {
    ((key >> 64) as u64 ^ key as u64)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .rotate_left(29)
}

impl Runs {
    /// Inserts or replaces a run; returns the stored record. A replaced record hands its tally
    /// bookkeeping (`counted_ms`, `counted`) on to the new one.
    pub fn insert(&mut self, key: RunKey, mut rec: RunRecord) -> &mut RunRecord {
        let keys = &self.keys;
        let i = match self.index.entry(
            hash(key),
            |&i| keys[i as usize] == key,
            |&i| hash(keys[i as usize]),
        ) {
            Entry::Occupied(e) => {
                let i = *e.get() as usize;
                let old = &self.records[i];
                (rec.counted_ms, rec.counted) = (old.counted_ms, old.counted);
                self.records[i] = rec;
                i
            }
            Entry::Vacant(e) => {
                let i = self.records.len();
                // A snapshot of 2^32 runs would need ~300 GB: not a limit a real install reaches.
                e.insert(u32::try_from(i).expect("fewer than 2^32 runs"));
                self.keys.push(key);
                self.records.push(rec);
                i
            }
        };
        &mut self.records[i]
    }

    /// Hands the tally bookkeeping of `old`'s runs on to the same runs here (a full read builds new
    /// records) and returns the runs of `old` that are not here any more (removed from MLflow).
    pub fn carry_from(&mut self, old: &Runs) -> Vec<(RunKey, RunRecord)> {
        let mut found = vec![false; old.len()];
        for (key, rec) in self.keys.iter().zip(self.records.iter_mut()) {
            if let Some(&i) = old
                .index
                .find(hash(*key), |&i| old.keys[i as usize] == *key)
            {
                let prev = &old.records[i as usize];
                (rec.counted_ms, rec.counted) = (prev.counted_ms, prev.counted);
                found[i as usize] = true;
            }
        }
        old.iter()
            .zip(found)
            .filter(|(_, found)| !found)
            .map(|((k, r), _)| (k, r.clone()))
            .collect()
    }

    pub fn get(&self, key: &RunKey) -> Option<&RunRecord> {
        self.index
            .find(hash(*key), |&i| self.keys[i as usize] == *key)
            .map(|&i| &self.records[i as usize])
    }

    pub fn get_mut(&mut self, key: &RunKey) -> Option<&mut RunRecord> {
        let keys = &self.keys;
        let i = *self.index.find(hash(*key), |&i| keys[i as usize] == *key)?;
        Some(&mut self.records[i as usize])
    }

    /// Keys and records, the records writable.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (RunKey, &mut RunRecord)> {
        self.keys.iter().copied().zip(self.records.iter_mut())
    }

    pub fn values(&self) -> std::slice::Iter<'_, RunRecord> {
        self.records.iter()
    }

    pub fn values_mut(&mut self) -> std::slice::IterMut<'_, RunRecord> {
        self.records.iter_mut()
    }

    pub fn iter(&self) -> impl Iterator<Item = (RunKey, &RunRecord)> {
        self.keys.iter().copied().zip(&self.records)
    }

    pub fn keys(&self) -> impl Iterator<Item = RunKey> + '_ {
        self.keys.iter().copied()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn reserve(&mut self, additional: usize) {
        let keys = &self.keys;
        self.index.reserve(additional, |&i| hash(keys[i as usize]));
        self.keys.reserve(additional);
        self.records.reserve(additional);
    }

    /// Keeps only the runs `keep` says yes to (a workspace's part of a read that failed is
    /// dropped).
    pub fn retain(&mut self, mut keep: impl FnMut(RunKey, &RunRecord) -> bool) {
        let keys = std::mem::take(&mut self.keys);
        let records = std::mem::take(&mut self.records);
        self.index.clear();
        for (k, r) in keys.into_iter().zip(records) {
            if keep(k, &r) {
                self.insert(k, r);
            }
        }
    }

    /// Drops the spare capacity a full read leaves in the vectors.
    pub fn shrink_to_fit(&mut self) {
        self.keys.shrink_to_fit();
        self.records.shrink_to_fit();
    }
}

impl Extend<(RunKey, RunRecord)> for Runs {
    fn extend<I: IntoIterator<Item = (RunKey, RunRecord)>>(&mut self, iter: I) {
        for (k, r) in iter {
            self.insert(k, r);
        }
    }
}

/// Everything the metrics are derived from, as of one sync.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub strings: Interner,
    /// By experiment id.
    pub experiments: HashMap<Sym, ExperimentRecord>,
    pub runs: Runs,
    /// By model name.
    pub models: BTreeMap<Sym, ModelRecord>,
    /// By model name and version number.
    pub versions: HashMap<(Sym, u32), VersionRecord>,
    /// Logged models (MLflow 3) by id.
    pub logged_models: HashMap<Box<str>, LoggedModelRecord>,
    /// Prompts of MLflow 3's prompt registry by name (as models are named), with their aliases:
    /// apart from the models, so that no figure mixes the two.
    pub prompts: BTreeMap<Sym, ModelRecord>,
    /// Prompt versions by prompt name and version number.
    pub prompt_versions: HashMap<(Sym, u32), VersionRecord>,
    /// Traces (MLflow 3) read since the tally last counted, by scope; it takes them.
    pub traces: Vec<super::traces::TraceBatch>,
    /// LLM calls of the apps' traces (MLflow's SPANS aggregation) read since; the tally takes them.
    pub llm_calls: Vec<super::traces::LlmBatch>,
    /// Calls of traces the rate card prices, read since; the tally takes them.
    pub rated: Vec<super::traces::RatedBatch>,
}

#[cfg(test)]
mod tests;
