"""Issue 10, item 1: 8 writers run `bd create` N times each through the daemon while it is
killed (-9), restarted and stopped (SIGSTOP 1.2 s) every 0.25 s, ROUNDS times at most.
Checks every exit status and output against the database: applied, "not applied",
"may or may not", duplicates. Usage: python3 scripts/load/faults.py BD N ROUNDS
"""
import subprocess, time, os, json, signal, sys, tempfile, random, collections
BD=sys.argv[1]; N=int(sys.argv[2]); ROUNDS=int(sys.argv[3])
d=tempfile.mkdtemp(prefix="bd-load-"); env=dict(os.environ, BD_ACTOR="w", BD_AUTO_START="1"); env.pop("CI",None)
subprocess.run(["git","init","-q"],cwd=d); subprocess.run([BD,"init","--prefix","t","-q"],cwd=d,env=env,stdout=subprocess.DEVNULL)
subprocess.run([BD,"daemon","start","-q"],cwd=d,env=env)
script='for i in $(seq 1 %d); do out=$("$0" create "w$1-$i" -q --timeout 3 2>err$1); code=$?; printf "%%s\\t%%s\\t%%s\\t%%s\\n" "w$1-$i" "$code" "$out" "$(tr "\\n\\t" "  " < err$1)"; done' % N
ws=[subprocess.Popen(["sh","-c",script,BD,str(p)],cwd=d,env=env,stdout=subprocess.PIPE,stderr=subprocess.DEVNULL,text=True) for p in range(8)]
faults=collections.Counter(); t0=time.time()
def pid():
    try: return json.load(open(d+"/.beads/daemon.lock"))["pid"]
    except Exception: return None
r=0
while any(w.poll() is None for w in ws) and r<ROUNDS:
    time.sleep(0.25); p=pid(); r+=1
    if not p: continue
    k=r%3
    if k==0: os.kill(p,signal.SIGKILL); faults["kill -9"]+=1
    elif k==1: subprocess.run([BD,"daemon","restart","-q"],cwd=d,env=env,stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL); faults["restart"]+=1
    else:
        os.kill(p,signal.SIGSTOP); time.sleep(1.2); os.kill(p,signal.SIGCONT); faults["SIGSTOP 1.2s"]+=1
res=[]
for w in ws:
    out,_=w.communicate()
    res+= [l.split("\t",3) for l in out.splitlines()]
elapsed=time.time()-t0
p=pid()
if p:
    try: os.kill(p,signal.SIGCONT)
    except Exception: pass
lst=json.loads(subprocess.run([BD,"--no-daemon","list","--all","-n","0","--json"],cwd=d,env=env,capture_output=True,text=True).stdout)
by=collections.defaultdict(list)
for i in lst: by[i["title"]].append(i["id"])
ok=sum(1 for t,c,o,e in res if c=="0"); bad=[x for x in res if x[1]!="0"]
maybe=sum(1 for x in res if "may or may not" in x[3])
dups=sum(1 for t,v in by.items() if len(v)>1)
wrong=sum(1 for t,c,o,e in res if (c=="0" and by.get(t)!=[o]) or (c!="0" and (t in by or "not applied" not in e)))
print(f"{len(res)} commands in {elapsed:.1f}s, faults {dict(faults)}: {ok} applied, {len(bad)} failed (not applied), {maybe} 'may or may not', {dups} duplicated titles, {wrong} answers that disagree with the database")
for b in bad[:5]: print("  ", b)
subprocess.run([BD,"daemon","stop","-q"],cwd=d,env=env,stderr=subprocess.DEVNULL)
