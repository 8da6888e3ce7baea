# A one-hop TCP relay, to measure what forwarding costs with copies (read/write) and with
# splice(2) (socket -> pipe -> socket, no copy to user space). Not part of the project.
import os, socket, sys, threading, fcntl
mode, listen, target = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
CHUNK = 1 << 20
F_SETPIPE_SZ = 1031

def pump(src, dst):
    s, d = src.fileno(), dst.fileno()
    try:
        if mode == "copy":
            buf = bytearray(CHUNK)
            mv = memoryview(buf)
            while True:
                n = src.recv_into(buf)
                if n == 0: break
                dst.sendall(mv[:n])
        else:
            r, w = os.pipe()
            try: fcntl.fcntl(w, F_SETPIPE_SZ, CHUNK)
            except OSError: pass
            while True:
                n = os.splice(s, w, CHUNK, flags=os.SPLICE_F_MOVE)
                if n == 0: break
                while n:
                    n -= os.splice(r, d, n, flags=os.SPLICE_F_MOVE)
    except OSError:
        pass
    finally:
        try: dst.shutdown(socket.SHUT_WR)
        except OSError: pass

ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", listen)); ls.listen(64)
while True:
    c, _ = ls.accept()
    u = socket.create_connection(("127.0.0.1", target))
    for a, b in ((c, u), (u, c)):
        threading.Thread(target=pump, args=(a, b), daemon=True).start()
