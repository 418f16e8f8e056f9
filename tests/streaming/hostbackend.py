"""A streaming Backend that runs real processes on the host (pipes, or a real pty for tty) and forwards ports to
127.0.0.1: the server under test cannot tell it from a container runtime."""

from __future__ import annotations

import asyncio
import fcntl
import os
import struct
import termios

from pycri.streaming import NotFoundError


async def _pump_in(src, write, close) -> None:
    """Copy the client's input into the process until EOF, then close the process side."""
    try:
        while data := await src.read(65536):
            await write(data)
    except (ConnectionError, OSError):
        pass
    finally:
        close()


async def _pump_out(reader: asyncio.StreamReader, out) -> None:
    while data := await reader.read(65536):
        await out.write(data)


class HostContainer:
    """A long-running process standing in for a container's main process (for attach)."""

    def __init__(self, cmd: list[str]) -> None:
        self.cmd = cmd
        self.proc: asyncio.subprocess.Process | None = None
        self.subscribers: list[asyncio.Queue] = []
        self._reader: asyncio.Task | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(*self.cmd, stdin=asyncio.subprocess.PIPE,
                                                         stdout=asyncio.subprocess.PIPE,
                                                         stderr=asyncio.subprocess.PIPE)
        self._reader = asyncio.create_task(self._fan_out())

    async def _fan_out(self) -> None:
        async def one(stream, name):
            while data := await stream.read(65536):
                for q in list(self.subscribers):
                    q.put_nowait((name, data))
        await asyncio.gather(one(self.proc.stdout, "stdout"), one(self.proc.stderr, "stderr"))
        await self.proc.wait()
        for q in list(self.subscribers):
            q.put_nowait(None)

    async def stop(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader:
            await self._reader


class HostBackend:
    def __init__(self) -> None:
        self.exec_containers = {"c1"}
        self.containers: dict[str, HostContainer] = {}
        self.pods = {"pod1"}
        self.resizes: list[tuple[int, int]] = []
        self.exec_calls = 0

    async def exec(self, container_id, cmd, tty, stdin, stdout, stderr, resize) -> int:
        if container_id not in self.exec_containers:
            raise NotFoundError(container_id)
        self.exec_calls += 1
        if tty:
            return await self._exec_tty(cmd, stdin, stdout, resize)
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        tasks = [_pump_out(proc.stdout, stdout) if stdout else proc.stdout.read(),
                 _pump_out(proc.stderr, stderr) if stderr else proc.stderr.read()]
        feeder = None
        if stdin:
            async def write(data):
                proc.stdin.write(data)
                await proc.stdin.drain()
            feeder = asyncio.create_task(_pump_in(stdin, write, proc.stdin.close))
        try:
            await asyncio.gather(*tasks)
            return await proc.wait()
        finally:
            if feeder:
                feeder.cancel()
            if proc.returncode is None:
                proc.kill()
            await proc.communicate()  # reap it and read its pipes to EOF, so the transport closes now

    async def _exec_tty(self, cmd, stdin, stdout, resize) -> int:
        master, slave = os.openpty()
        loop = asyncio.get_running_loop()

        def set_size(w: int, h: int) -> None:
            self.resizes.append((w, h))
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", h, w, 0, 0))

        while not resize.empty():  # the first size may arrive before the process starts
            set_size(*resize.get_nowait())

        def child_setup() -> None:
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        proc = await asyncio.create_subprocess_exec(*cmd, stdin=slave, stdout=slave, stderr=slave,
                                                    preexec_fn=child_setup)
        os.close(slave)
        os.set_blocking(master, False)
        out_q: asyncio.Queue[bytes] = asyncio.Queue()

        def readable() -> None:
            try:
                data = os.read(master, 65536)
            except BlockingIOError:
                return
            except OSError:  # EIO: every slave fd is closed
                data = b""
            if not data:
                loop.remove_reader(master)
            out_q.put_nowait(data)

        loop.add_reader(master, readable)

        async def resizer() -> None:
            while True:
                set_size(*await resize.get())

        async def write(data: bytes) -> None:
            os.write(master, data)

        helpers = [asyncio.create_task(resizer())]
        if stdin:
            helpers.append(asyncio.create_task(_pump_in(stdin, write, lambda: None)))
        try:
            while data := await out_q.get():
                await stdout.write(data)
            return await proc.wait()
        finally:
            for t in helpers:
                t.cancel()
            loop.remove_reader(master)
            os.close(master)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    async def attach(self, container_id, tty, stdin, stdout, stderr, resize) -> None:
        c = self.containers.get(container_id)
        if c is None:
            raise NotFoundError(container_id)
        q: asyncio.Queue = asyncio.Queue()
        c.subscribers.append(q)
        feeder = None
        if stdin:
            async def write(data):
                c.proc.stdin.write(data)
                await c.proc.stdin.drain()
            feeder = asyncio.create_task(_pump_in(stdin, write, lambda: None))
        try:
            while (item := await q.get()) is not None:
                name, data = item
                out = stdout if name == "stdout" else stderr
                if out is not None:
                    await out.write(data)
        finally:
            c.subscribers.remove(q)
            if feeder:
                feeder.cancel()

    async def port_forward(self, pod_sandbox_id, port, reader, writer) -> None:
        if pod_sandbox_id not in self.pods:
            raise NotFoundError(pod_sandbox_id)
        r, w = await asyncio.open_connection("127.0.0.1", port)

        async def upstream() -> None:
            try:
                while data := await reader.read(65536):
                    w.write(data)
                    await w.drain()
                if w.can_write_eof():
                    w.write_eof()
            except (ConnectionError, OSError):
                pass

        up = asyncio.create_task(upstream())
        try:
            while data := await r.read(65536):  # the target hung up: done, like containerd's io.Copy pair
                await writer.write(data)
        finally:
            up.cancel()
            w.close()
