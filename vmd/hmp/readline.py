"""Line editing for the HMP monitor, with the keys of QEMU's util/readline.c.

Printable characters are inserted at the cursor; Backspace/DEL, Ctrl-D
(delete), Ctrl-W (word), Ctrl-U (whole line; a vmd extension, QEMU ignores
it), Ctrl-A/Ctrl-E and Home/End, Left/Right, Up/Down and Ctrl-P/Ctrl-N
(history), Tab (completion) and Enter (CR or LF; CR LF counts once).

The terminal is updated like QEMU's readline_update(): the line is kept as
last shown and only the difference is sent, with ``ESC [ D``/``ESC [ C``
to move the cursor and ``ESC [ K`` to clear a shortened tail. (QEMU
redraws the whole line after each key; the screen ends up the same.)
"""

from __future__ import annotations

from collections.abc import Callable

PROMPT = "(qemu) "
LINE_MAX = 4095  # READLINE_CMD_BUF_SIZE
HISTORY_MAX = 64  # READLINE_MAX_CMDS

_NORMAL, _ESC, _CSI, _SS3 = range(4)
_LEFT, _RIGHT, _CLEAR = "\033[D", "\033[C", "\033[K"


class ReadLine:
    """One monitor's command line, history and completion state.

    ``output(text)`` receives terminal output with ``\\n`` line ends (the
    monitor turns them into CR LF); ``on_line(line)`` gets each entered
    line; ``complete(text)`` returns ``(start, candidates)`` for the word
    ending at the cursor.
    """

    def __init__(self, output: Callable[[str], None],
                 on_line: Callable[[str], None],
                 complete: Callable[[str], tuple[int, list[str]]]) -> None:
        self._output = output
        self._on_line = on_line
        self._complete = complete
        self.line = ""
        self.cursor = 0
        self._shown = ""
        self._shown_cursor = 0
        self._state = _NORMAL
        self._param = 0
        self._after_cr = False
        self.history: list[str] = []
        self._hist_entry = -1

    # -- what the monitor calls -------------------------------------------------

    def restart(self) -> None:
        """Forget the line being typed (readline_restart)."""
        self.line, self.cursor = "", 0

    def show_prompt(self) -> None:
        """Print the prompt and the current line on a fresh line."""
        self._output(PROMPT)
        self._shown, self._shown_cursor = "", 0
        self._state = _NORMAL
        self._update()

    def handle_byte(self, byte: int) -> None:
        after_cr, self._after_cr = self._after_cr, byte == 13
        if self._state == _ESC:
            self._state = {ord("["): _CSI, ord("O"): _SS3}.get(byte, _NORMAL)
            self._param = 0
        elif self._state == _CSI:
            self._csi(byte)
        elif self._state == _SS3:
            self._state = _NORMAL
            self._home_end(byte)
        elif byte in (10, 13):
            if not (byte == 10 and after_cr):
                self._enter()
            return
        else:
            self._normal(byte)
        self._update()

    # -- keys -----------------------------------------------------------------

    def _normal(self, byte: int) -> None:
        action = _CONTROL_KEYS.get(byte)
        if action is not None:
            action(self)
        elif byte == 27:
            self._state = _ESC
        elif byte == 155:
            self._state, self._param = _CSI, 0
        elif byte >= 32:
            self._insert(chr(byte))

    def _csi(self, byte: int) -> None:
        if ord("0") <= byte <= ord("9"):
            self._param = self._param * 10 + byte - ord("0")
            return
        self._state = _NORMAL
        if byte == ord("A"):
            self._history_up()
        elif byte == ord("B"):
            self._history_down()
        elif byte == ord("C"):
            self.cursor = min(self.cursor + 1, len(self.line))
        elif byte == ord("D"):
            self.cursor = max(self.cursor - 1, 0)
        elif byte == ord("~"):
            {1: self._home, 3: self._delete, 4: self._end,
             7: self._home, 8: self._end}.get(self._param, _ignore)()
        else:
            self._home_end(byte)

    def _home_end(self, byte: int) -> None:
        if byte == ord("H"):
            self._home()
        elif byte == ord("F"):
            self._end()

    def _insert(self, text: str) -> None:
        room = LINE_MAX - len(self.line)
        text = text[:max(room, 0)]
        self.line = self.line[:self.cursor] + text + self.line[self.cursor:]
        self.cursor += len(text)

    def _home(self) -> None:
        self.cursor = 0

    def _end(self) -> None:
        self.cursor = len(self.line)

    def _delete(self) -> None:
        self.line = self.line[:self.cursor] + self.line[self.cursor + 1:]

    def _backspace(self) -> None:
        if self.cursor > 0:
            self.line = self.line[:self.cursor - 1] + self.line[self.cursor:]
            self.cursor -= 1

    def _kill_line(self) -> None:
        self.restart()

    def _kill_word(self) -> None:
        """Ctrl-W: the word before the cursor and the spaces after it."""
        start = self.cursor
        while start > 0 and self.line[start - 1] == " ":
            start -= 1
        while start > 0 and self.line[start - 1] != " ":
            start -= 1
        self.line = self.line[:start] + self.line[self.cursor:]
        self.cursor = start

    def _history_up(self) -> None:
        if self._hist_entry == 0 or not self.history:
            return
        if self._hist_entry == -1:
            self._hist_entry = len(self.history)
        self._hist_entry -= 1
        self.line = self.history[self._hist_entry]
        self.cursor = len(self.line)

    def _history_down(self) -> None:
        if self._hist_entry == -1:
            return
        self._hist_entry += 1
        if self._hist_entry < len(self.history):
            self.line = self.history[self._hist_entry]
        else:
            self.line, self._hist_entry = "", -1
        self.cursor = len(self.line)

    def _add_history(self, line: str) -> None:
        """readline_hist_add(): no empty lines, a repeat moves to the end."""
        if not line:
            return
        if line in self.history:
            self.history.remove(line)
        elif len(self.history) >= HISTORY_MAX:
            del self.history[0]
        self.history.append(line)
        self._hist_entry = -1

    def _enter(self) -> None:
        line = self.line
        self._add_history(line)
        self._output("\n")
        self.restart()
        self._shown, self._shown_cursor = "", 0
        self._on_line(line)

    def _completion(self) -> None:
        """Tab: complete the word before the cursor (readline_completion)."""
        start, candidates = self._complete(self.line[:self.cursor])
        if not candidates:
            return
        typed = self.cursor - start
        if len(candidates) == 1:
            word = candidates[0]
            self._insert(word[typed:] + ("" if word.endswith("/") else " "))
            return
        candidates = sorted(candidates)
        prefix = _common_prefix(candidates)
        if len(prefix) > typed:
            self._insert(prefix[typed:])
        width = min(max(max(len(c) for c in candidates) + 2, 10), 80)
        columns = 80 // width
        rows = [candidates[i:i + columns]
                for i in range(0, len(candidates), columns)]
        self._output("\n" + "".join(
            "".join(c.ljust(width) for c in row) + "\n" for row in rows))
        self.show_prompt()

    # -- the terminal ---------------------------------------------------------

    def _update(self) -> None:
        """Bring the terminal from the line as shown to the line as is."""
        out: list[str] = []
        if self.line != self._shown:
            same = len(_common_prefix([self.line, self._shown]))
            out.append(_move(self._shown_cursor, same))
            out.append(self.line[same:])
            if len(self.line) < len(self._shown):
                out.append(_CLEAR)
            self._shown, self._shown_cursor = self.line, len(self.line)
        out.append(_move(self._shown_cursor, self.cursor))
        self._shown_cursor = self.cursor
        text = "".join(out)
        if text:
            self._output(text)


def _move(frm: int, to: int) -> str:
    return _RIGHT * (to - frm) if to > frm else _LEFT * (frm - to)


def _common_prefix(words: list[str]) -> str:
    first, last = min(words), max(words)
    size = 0
    while size < len(first) and first[size] == last[size]:
        size += 1
    return first[:size]


def _ignore() -> None:
    pass


_CONTROL_KEYS: dict[int, Callable[[ReadLine], None]] = {
    1: ReadLine._home,        # Ctrl-A
    4: ReadLine._delete,      # Ctrl-D
    5: ReadLine._end,         # Ctrl-E
    8: ReadLine._backspace,   # Ctrl-H
    9: ReadLine._completion,  # Tab
    14: ReadLine._history_down,  # Ctrl-N
    16: ReadLine._history_up,    # Ctrl-P
    21: ReadLine._kill_line,  # Ctrl-U
    23: ReadLine._kill_word,  # Ctrl-W
    127: ReadLine._backspace,  # DEL
}
