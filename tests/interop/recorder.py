"""A web target on python's own http.server for the interop suites: static files from a
folder, an upload sink (POST) answering the body's sha256, and endless MJPEG at /mjpeg
(close-delimited, HTTP/1.0). Usage: recorder.py PORT DIR [BIND]."""
import functools, hashlib, http.server, sys, time
class Recorder(http.server.SimpleHTTPRequestHandler):
    def do_POST(self):
        left, h = int(self.headers.get("Content-Length", "0")), hashlib.sha256()
        while left > 0:
            d = self.rfile.read(min(left, 1 << 16))
            if not d: break
            h.update(d); left -= len(d)
        body = h.hexdigest().encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path != "/mjpeg":
            return super().do_GET()
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame"); self.end_headers()
        jpeg = b"\xff\xd8" + b"\x55" * 2000 + b"\xff\xd9"
        try:
            while True:
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n" % (len(jpeg), jpeg))
                self.wfile.flush(); time.sleep(0.1)
        except OSError:
            pass
handler = functools.partial(Recorder, directory=sys.argv[2])
http.server.ThreadingHTTPServer((sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1", int(sys.argv[1])), handler).serve_forever()
