//! A sequence of length-delimited `CallRequest`s decoded from arbitrary bytes and run by the executors on a scratch
//! session in a fresh temporary directory (see `home_agent::fuzzing` for what is confined and checked).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    home_agent::fuzzing::in_fresh_dir(|dir| home_agent::fuzzing::run_requests(dir, bytes));
});
