//! A `HelloRequest` decoded from arbitrary bytes and answered by a fresh `Home` service: a status or a
//! session, never a panic (see `home_agent::fuzzing::run_hello`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| home_agent::fuzzing::run_hello(bytes));
