//! The tokio runtime the benches drive the exporter's code on: a fixed number of workers, so a
//! figure does not depend on how many cores the runtime guessed.

pub fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap()
}
