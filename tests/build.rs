//! make + gcc building a small C project at home (compiler temporaries, object files, the link), then the
//! result, which exists only at home, run through `remote-shim` too; incremental rebuilds must agree.

use homeward::{require_tools, skip_unless_root, Compare, Hosts, Times};

const MAKEFILE: &str = "\
CC = gcc
CFLAGS = -O2 -Wall -Werror
OBJS = main.o greet.o sum.o

app: $(OBJS)
\t$(CC) $(CFLAGS) -o $@ $(OBJS)

%.o: %.c project.h
\t$(CC) $(CFLAGS) -c $<

clean:
\trm -f app $(OBJS)

.PHONY: clean
";

const HEADER: &str = "\
#ifndef PROJECT_H
#define PROJECT_H
void greet(const char *who);
long sum_file(const char *path);
#endif
";

const MAIN_C: &str = r#"#include <stdio.h>
#include <stdlib.h>
#include "project.h"

int main(int argc, char **argv) {
    greet(argc > 1 ? argv[1] : "nobody");
    for (int i = 2; i < argc; i++) {
        long s = sum_file(argv[i]);
        if (s < 0) {
            perror(argv[i]);
            return 3;
        }
        printf("%s: %ld\n", argv[i], s);
    }
    return 0;
}
"#;

const GREET_C: &str = r#"#include <stdio.h>
#include "project.h"

void greet(const char *who) { printf("hello, %s\n", who); }
"#;

const SUM_C: &str = r#"#include <stdio.h>
#include "project.h"

/* Sum of the decimal numbers in a file, or -1 if it cannot be opened. */
long sum_file(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long total = 0, x;
    while (fscanf(f, "%ld", &x) == 1) total += x;
    fclose(f);
    return total;
}
"#;

#[test]
fn make_builds_at_home_and_the_result_runs_remotely() {
    skip_unless_root!();
    require_tools!("make", "gcc");
    let hosts = Hosts::start();
    hosts.write("proj/Makefile", MAKEFILE);
    hosts.write("proj/project.h", HEADER);
    hosts.write("proj/main.c", MAIN_C);
    hosts.write("proj/greet.c", GREET_C);
    hosts.write("proj/sum.c", SUM_C);
    hosts.write("proj/numbers.txt", (1..=100).map(|i| format!("{i}\n")).collect::<String>());
    let native = hosts.native_copy();
    let make = |args: &[&str]| {
        let argv: Vec<&str> = ["make"].iter().chain(args).copied().collect();
        hosts.cmd(&argv).cwd("proj").check_with(&native, &Compare::new().stderr())
    };

    make(&[]);
    assert!(hosts.exists("proj/app"), "make did not leave proj/app at home");
    // The build is deterministic and both ran at the same path: objects and program are identical.
    hosts.assert_home_matches(&native, Times::Ignore);

    // The program exists only at home: run it by relative and by absolute path.
    let run =
        |cwd: &str, argv: &[&str]| hosts.cmd(argv).cwd(cwd).check_with(&native, &Compare::new().stderr());
    run("proj", &["./app", "world", "numbers.txt", "missing.txt"]);
    let absolute = hosts.path("proj/app").display().to_string();
    run(".", &[&absolute, "from-top", "proj/numbers.txt"]);

    // Nothing to do, then an incremental rebuild after one source changes (make compares mtimes).
    make(&[]);
    hosts.cmd(&["touch", "greet.c"]).cwd("proj").check(&native);
    hosts.cmd(&["sed", "-i", "s/hello/hi/", "greet.c"]).cwd("proj").check(&native);
    make(&[]);
    run("proj", &["./app", "again"]);
    make(&["clean"]);
    make(&["-j2"]);
    run("proj", &["./app", "parallel", "numbers.txt"]);
    hosts.assert_home_matches(&native, Times::Ignore);
}
