//! A battery of shell one-liners with real programs (coreutils, tar, gzip, git, sqlite3, python3, make,
//! patch, dd, flock; redirections, pipelines, signals, locks, maps), each run natively and under
//! remote-shim in a directory of its own, and compared (status and standard output). Most of these were
//! first written to look for differences; those they found (a shell's `< file` a pipe to `fstat` and
//! `lseek`, `dd of=f seek=N` writing nothing, `cat f >> f` not refused, `readlink` of
//! `/proc/self/fd/N`, `/dev/stdin` opened for writing) are fixed, and this keeps them so.

use homeward::{require_tools, skip_unless_root, Hosts};
use std::time::Duration;

/// The one-liners, separated by lines holding `@@`. Each starts in a directory holding `f` (four lines),
/// `d/a.txt` and `d/sub/b.txt`, `f` and `d/a.txt` dated 2020-09-13.
const BATTERY: &str = r####"
tar cf out.tar d && tar tvf out.tar | sort
@@
cat f >> f; echo $?; cat f
@@
cp -a d d2 && ls -lR --time-style=+%s d2 | sort
@@
ln -s f l && readlink -f l && stat -c '%N' l
@@
touch -d '2021-01-01' d/sub/b.txt; find . -newer f -type f | sort
@@
sort -o f f; cat f
@@
sed -i s/apple/APPLE/ f && cat f && stat -c '%a %s' f
@@
git init -q r && cd r && echo x>a && git add a && git -c user.name=a -c user.email=a@a commit -qm m && git log --oneline | wc -l && git status --porcelain
@@
sqlite3 t.db 'create table t(a); insert into t values(1); select * from t;' && sqlite3 t.db 'select count(*) from t'
@@
mkfifo p; (echo hi > p &) ; cat p
@@
flock f -c 'echo locked'
@@
touch -d '2020-01-01 00:00:00 UTC' f; stat -c %Y f
@@
du -sb d | cut -f1; df . | tail -1 | wc -w
@@
dd if=f of=g bs=1 skip=2 count=3 2>/dev/null && cat g; echo
@@
dd if=/dev/zero of=h bs=1k count=4 seek=2 2>/dev/null; stat -c %s h; od -c h | head -3
@@
printf 'abcdefgh' > h; dd if=/dev/zero of=h bs=1 count=2 seek=3 conv=notrunc 2>/dev/null; od -c h
@@
exec 3>f; echo a >&3; exec 3>&-; cat f
@@
mkdir -p a/b/c; rmdir -p a/b/c; ls
@@
chmod 600 f; ls -l f | cut -c1-10
@@
awk '{print $1}' f > o; cat o; wc -l < o
@@
ls | xargs wc -c 2>&1 | sort
@@
echo hi | tee t1 t2 >/dev/null; cat t1 t2
@@
install -m 640 f g && stat -c %a g
@@
mv f g && ls && cat g
@@
gzip -k f && gunzip -c f.gz && ls
@@
split -b 10 f part_ && ls part_* && cat part_ab
@@
python3 -c 'import os,sys; print(sys.stdin.seekable(), sys.stdout.seekable())' < f > o; cat o
@@
python3 -c 'import os; f=open("f","r+"); f.seek(0,2); f.write("x\n"); print(f.tell())'; tail -1 f
@@
{ echo one; echo two; } > o; wc -c o; { echo three; } >> o; cat o
@@
python3 -c 'import sys; sys.stdout.write("x"*10); sys.stdout.flush(); import os; print(os.lseek(1,0,1), file=sys.stderr)' > o 2>e; cat o e
@@
head -c 5 f > o && tail -c 3 f >> o && od -c o
@@
cmp f f && echo same; diff f d/a.txt > /dev/null; echo $?
@@
wc -c < f; wc -l f; md5sum f d/a.txt
@@
tac f | head -2
@@
cut -c1-3 < f | uniq -c
@@
stat -c '%F %s %h %a' d d/a.txt f
@@
perl -e 'open(F,"<","f"); seek(F,7,0); print scalar(<F>)'
@@
truncate -s 3 f; cat f; echo; truncate -s 10 f; od -c f
@@
ln f hl; stat -c %h f hl; rm hl; stat -c %h f
@@
echo data > new; sync new 2>/dev/null; cat new
@@
python3 - <<'PY'
import os, tempfile
fd, p = tempfile.mkstemp(dir=".")
os.write(fd, b"hello")
os.close(fd)
print(open(p).read(), os.path.basename(p).startswith("tmp"))
os.unlink(p)
PY
@@
python3 -c 'print("x"*100000)' > big; wc -c big
@@
( echo a; sleep 0.1; echo b ) > o & wait; cat o
@@
for i in 1 2 3; do echo $i >> o; done; cat o
@@
seq 1 100000 > s; tail -1 s; wc -l s
@@
{ exec 3>&1; echo to3 >&3; echo to1; } > o; cat o
@@
cat < f > o; cmp f o && echo same
@@
tee o < f > /dev/null; cat o
@@
sh -c 'echo child' > o; cat o
@@
python3 -c 'import os; os.write(1,b"a"); os.ftruncate(1,0); os.write(1,b"b")' > o; od -c o
@@
dd if=f of=o bs=4 count=2 seek=1 2>/dev/null; od -c o
@@
head -c 3 f 1<>f; cat f
@@
gzip -c f > f.gz; gunzip -c f.gz
@@
tar cf - d > d.tar; tar tf d.tar | sort
@@
sort f > o 2>&1; cat o
@@
python3 -c 'import sys; print(sys.stdout.isatty(), sys.stdout.fileno(), sys.stdout.seekable())' > o; cat o
@@
readlink /proc/self/fd/1 > o; cat o
@@
stat -L -c '%s' /dev/stdout > o; cat o
@@
python3 -c 'import os; print(os.fstat(1).st_size)' >> f; tail -1 f
@@
echo abc > o; echo -n X | dd of=o bs=1 seek=1 conv=notrunc 2>/dev/null; cat o
@@
( cat f > /dev/stdout ) > o; cat o
@@
python3 -c 'import fcntl,os; print(fcntl.fcntl(1, fcntl.F_GETFL) & os.O_APPEND != 0)' >> o; cat o
@@
printf 'all:\n\t@echo built > out.txt\n\t@cat out.txt\n' > Makefile; make > mlog 2>&1; cat mlog
@@
python3 -c 'import sys,os; sys.stdout.write("abc"); sys.stdout.flush(); os.lseek(1, 1, 0); sys.stdout.write("Z"); sys.stdout.flush()' > o; cat o
@@
ls -l > o; wc -l < o
@@
yes | head -c 100000 > o; wc -c < o
@@
cat f f f > o 2>/dev/null; wc -l < o
@@
python3 -c 'import os; fd=os.dup(1); os.write(fd, b"via dup\n")' > o; cat o
@@
exec 5>o; echo five >&5; exec 5>&-; cat o
@@
echo err >&2 2>o; cat o 2>/dev/null; echo; ( echo e1 >&2 ) 2> e; cat e
@@
cp f o; echo more >> o; cat o | wc -l; python3 -c 'import os; print(os.lseek(1,0,2))' >> o; tail -1 o
@@
python3 -c 'import os; print(os.lseek(1, 2, 0), os.read(1, 3))' 1< f; echo
@@
exec 2<f; python3 -c 'import os; print(os.lseek(2, 7, 0), os.read(2, 5), os.fstat(2).st_size)'
@@
python3 -c 'import os; os.ftruncate(1, 0)' 2>&1 | cat; echo $?
@@
python3 -c 'import os; print(os.stat(1).st_mode != 0)' | cat
@@
python3 -c 'import sys; print(sys.stdout.seekable())' | cat
@@
python3 -c 'import os; os.close(1); 
try: os.lseek(1,0,1)
except OSError as e: print(e.errno, file=__import__("sys").stderr)'
@@
mkdir x && tar cf - d | tar xf - -C x && find x | sort && stat -c '%Y' x/d/a.txt
@@
cp -r d d3 && diff -r d d3 && echo same
@@
find d -type f -exec wc -c {} + | sort
@@
ls d | xargs -P2 -I{} echo item {} | sort
@@
t=$(mktemp -p .) && echo hi > $t && cat $t && rm $t && echo removed
@@
ln -sf f link1 && ln -sf d/a.txt link1 && readlink link1
@@
diff -u f d/a.txt > p.diff; echo $?; patch -o out.txt f p.diff >/dev/null; cat out.txt
@@
sort -u f -o f; cat f
@@
csplit -s f 2 && ls xx* && cat xx01
@@
python3 -c 'import shutil; shutil.copytree("d","d4"); print(sorted(__import__("os").listdir("d4")))'
@@
python3 -c 'import os; os.makedirs("a/b/c", exist_ok=True); os.rename("a/b","a/z"); print(os.listdir("a"))'
@@
python3 -c 'import pathlib; p=pathlib.Path("n.txt"); p.write_text("abc"); print(p.stat().st_size, p.read_text()); p.unlink(); print(p.exists())'
@@
echo "line" | python3 -c 'import sys; data=sys.stdin.read(); open("w.txt","w").write(data*3)'; wc -l w.txt
@@
git init -q g && cd g && printf 'a\nb\n' > a && git add a && git -c user.name=a -c user.email=a@a commit -qm 1 && printf 'a\nc\n' > a && git diff --stat && git stash -q && cat a && git stash pop -q && cat a
@@
sqlite3 s.db "create table t(x); begin; insert into t values(1),(2); commit; pragma journal_mode=wal; insert into t values(3);" && sqlite3 s.db "select sum(x) from t"
@@
printf '#!/bin/sh\necho script ran "$@"\n' > s.sh && chmod +x s.sh && ./s.sh a b && sh s.sh c
@@
python3 -c 'import fcntl; f=open("f"); fcntl.flock(f, fcntl.LOCK_EX); print("locked"); fcntl.flock(f, fcntl.LOCK_UN)'
@@
touch -r f g && stat -c %Y g
@@
echo abc > a1; cp --preserve=all a1 a2 2>&1; stat -c '%a %s' a2
@@
dd if=f bs=3 count=2 2>/dev/null | od -c | head -2
@@
yes abc | head -n 3 > y; cat y; head -c 5 y | od -c | head -1
@@
python3 -c 'import os; fd=os.open("o.txt", os.O_WRONLY|os.O_CREAT|os.O_EXCL, 0o640); os.write(fd,b"x"); os.close(fd); print(oct(os.stat("o.txt").st_mode))'
@@
umask 077; touch um; stat -c %a um
@@
mkdir -m 700 md; stat -c %a md; rmdir md
@@
echo $'a\tb' | cut -f2 > c.txt; cat c.txt; file c.txt 2>/dev/null | cut -d: -f2
@@
gzip -c f | gzip -dc | md5sum
@@
python3 -c 'import os; r,w=os.pipe(); os.write(w,b"p"); print(os.read(r,1))'
@@
exec 4<f; read -u 4 l1; read -u 4 l2; echo "$l1 $l2"; exec 4<&-
@@
exec 4<>rw.txt; echo hello >&4; exec 4>&-; cat rw.txt
@@
while IFS= read -r line; do echo "[$line]"; done < f | head -2
@@
awk 'NR==2' < f; sed -n 3p < f; grep -c a < f
@@
cat f | sort | uniq -c | sort -rn | head -2
@@
realpath f d/../f; readlink -f /dev/stdin < f
@@
python3 -c 'import os; print(os.path.realpath("/dev/stdin"), os.path.samefile("/dev/stdin", "f"))' < f
@@
sleep 0.2 & wait $!; echo $?
@@
( trap 'echo got TERM' TERM; kill -TERM $BASHPID; echo after ) 
@@
timeout 0.3 sleep 5; echo $?
@@
python3 -c 'import subprocess; p=subprocess.run(["sh","-c","echo out; echo err >&2; exit 3"], capture_output=True); print(p.returncode, p.stdout, p.stderr)'
@@
python3 -c 'import subprocess; subprocess.run(["cat"], stdin=open("f"), stdout=open("o","w")); print(open("o").read().count("\n"))'
@@
python3 -c 'import subprocess; r=subprocess.run(["wc","-c"], stdin=open("f"), capture_output=True, text=True); print(r.stdout.strip())'
@@
python3 -c 'import subprocess,tempfile; t=tempfile.TemporaryFile(); subprocess.run(["echo","tmp"], stdout=t); t.seek(0); print(t.read())'
@@
nohup sh -c 'echo nohupped' > nh.out 2>&1; cat nh.out
@@
script_out=$(cat f | wc -l); echo $script_out
@@
date -r f +%s
@@
python3 -c 'import time,os; t=time.time(); os.utime("f"); print(abs(os.stat("f").st_mtime - t) < 2)'
@@
env -i PATH=/usr/bin:/bin sh -c 'cd d && pwd -P | sed "s|.*/||"'
@@
cd d/sub && cd ../.. && ls f && cd - >/dev/null && pwd | sed 's|.*/||'
@@
python3 -c 'import os; os.chdir("d"); print(os.getcwd().split("/")[-1]); print(sorted(os.listdir(".")))'
@@
tee -a f < /dev/null; wc -l < f; echo x | tee -a f >/dev/null; tail -1 f
@@
python3 -c 'import sys; print(sys.stdin.isatty(), sys.stdin.seekable(), len(sys.stdin.read()))' < f
@@
python3 -c 'import os,sys; os.dup2(sys.stdin.fileno(), 5); print(os.read(5, 6))' < f
@@
python3 -c 'import mmap; f=open("f","rb"); m=mmap.mmap(f.fileno(),0,access=mmap.ACCESS_READ); print(m[:6])'
@@
python3 -c 'import mmap,sys; m=mmap.mmap(0,0,access=mmap.ACCESS_READ); print(m[:6])' < f
"####;

#[test]
fn shell_one_liners_behave_as_at_home() {
    skip_unless_root!();
    require_tools!(
        "bash", "python3", "tar", "gzip", "git", "sqlite3", "make", "patch", "dd", "flock", "perl"
    );
    let hosts = Hosts::start();
    let snippets: Vec<&str> = BATTERY.split("\n@@\n").map(str::trim).filter(|s| !s.is_empty()).collect();
    for i in 0..snippets.len() {
        hosts.write(&format!("b{i}/f"), "banana\napple\ncherry\napple\n");
        hosts.write(&format!("b{i}/d/a.txt"), "aaa\n");
        hosts.write(&format!("b{i}/d/sub/b.txt"), "bbb\n");
    }
    let dated =
        hosts.cmd(&["sh", "-c", "for d in b*; do touch -d @1600000000 $d/f $d/d/a.txt; done"]).outside();
    dated.assert_success();
    let native = hosts.native_copy();
    for (i, snippet) in snippets.iter().enumerate() {
        hosts
            .cmd(&["bash", "-c", snippet])
            .cwd(&format!("b{i}"))
            .timeout(Duration::from_secs(60))
            .check(&native);
    }
}
