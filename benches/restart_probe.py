"""Restart probe: kill -9 the relay 4 times and time until the tunnel echoes again.

Run from a directory holding a relay.toml whose data_dir exists (e.g. after `cargo bench
--bench tunnel`: target/tmp/bench-tunnel/periscope-500ms). Bounded: 4 kills, 10 s waits.
"""
import subprocess, socket, time, os, sys, re
exe = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "periscope")
cfg=open("relay.toml").read(); quic=re.search(r'quic = "([^"]+)"',cfg).group(1)
port=21999
tok=subprocess.run([exe,"token","issue","--config","relay.toml","--agent","probe","--tcp-port",str(port)],capture_output=True,text=True).stdout.strip()
srv=socket.socket(); srv.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); srv.bind(("127.0.0.1",0)); srv.listen(64)
import threading
def echo():
    while True:
        c,_=srv.accept()
        def h(c=c):
            while True:
                x=c.recv(100)
                if not x: break
                c.sendall(x)
        threading.Thread(target=h,daemon=True).start()
threading.Thread(target=echo,daemon=True).start()
def relay(): return subprocess.Popen([exe,"relay","--config","relay.toml"],stderr=open("probe-relay.log","a"),env=dict(os.environ,PERISCOPE_LOG="warn"))
r=relay(); time.sleep(0.5)
import hashlib,base64
pem=open("data/self-signed.crt").read(); der=base64.b64decode("".join(l for l in pem.splitlines() if not l.startswith("-----")))
fp="sha256:"+hashlib.sha256(der).hexdigest()
a=subprocess.Popen([exe,"agent","--relay",quic,"--fingerprint",fp,"--token",tok,"--keep-alive=500ms","--tcp",f"e=127.0.0.1:{srv.getsockname()[1]}:{port}"],stderr=open("probe-agent.log","w"),env=dict(os.environ,PERISCOPE_LOG="info"))
def ready():
    t0=time.time()
    while time.time()-t0<10:
        try:
            s=socket.create_connection(("127.0.0.1",port),timeout=0.3); s.settimeout(0.3); s.sendall(b"x")
            if s.recv(1)==b"x": return time.time()-t0
        except OSError: time.sleep(0.005)
print("first up", ready())
for i in range(4):
    time.sleep(6+0.4*i)
    r.kill(); r.wait(); t0=time.time(); r=relay()
    while True:
        try:
            s=socket.create_connection(("127.0.0.1",port),timeout=0.3); s.settimeout(0.3); s.sendall(b"x")
            if s.recv(1)==b"x": break
        except OSError: time.sleep(0.005)
    print("kill at %.3f back after %.3f"%(t0%100, time.time()-t0), flush=True)
r.kill(); a.kill(); r.wait(); a.wait()
