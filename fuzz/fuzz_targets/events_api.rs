#![no_main]
//! `mlflow_exporter::fuzzing::events_api`: any input may be refused, none may panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mlflow_exporter::fuzzing::events_api(data));
