"""A web target on python's own http.server for the interop suites: static files from a
folder, an upload sink (POST) answering the body's sha256, and endless MJPEG at /mjpeg
(close-delimited, HTTP/1.0), and at /ws a WebSocket upgrade (101 with the RFC 6455 accept
key) after which every byte is echoed (the edge splices upgraded connections; it never reads
WebSocket frames). Usage: recorder.py PORT DIR [BIND]."""
import base64, functools, hashlib, http.server, sys, time
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
        if self.path == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            key = self.headers.get("Sec-WebSocket-Key", "") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
            self.protocol_version = "HTTP/1.1"
            self.send_response(101)
            self.send_header("Upgrade", "websocket"); self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", base64.b64encode(hashlib.sha1(key.encode()).digest()).decode())
            self.end_headers(); self.wfile.flush()
            while True:
                d = self.connection.recv(65536)
                if not d: break
                self.connection.sendall(d)
            self.close_connection = True
            return
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
