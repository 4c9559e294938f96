/**
 * Shell completion scripts for bash, zsh and fish, made from the command table: the
 * commands and sub-commands, each one's flags (with their descriptions where the shell
 * shows them), the values of flags with fixed choices, files or directories for the rest.
 */
import type { Command, Flag, Flags } from './command.js';
import { GLOBAL_FLAGS } from './table.js';

export const SHELLS = ['bash', 'zsh', 'fish'] as const;
export type Shell = (typeof SHELLS)[number];

/** One place on the command line: `''` (no command yet), `build`, `repo add`. */
interface Place {
  path: string;
  subs: Command[];
  flags: Flags;
  operands: 'file' | 'dir' | 'none';
}

function places(commands: Command[]): Place[] {
  const out: Place[] = [{ path: '', subs: commands, flags: GLOBAL_FLAGS, operands: 'none' }];
  const visit = (cmd: Command, path: string) => {
    out.push({ path, subs: cmd.subcommands ?? [], flags: { ...GLOBAL_FLAGS, ...cmd.options }, operands: cmd.operands?.complete ?? 'none' });
    for (const s of cmd.subcommands ?? []) visit(s, `${path} ${s.name}`);
  };
  for (const c of commands) visit(c, c.name);
  return out;
}

const names = (name: string, f: Flag) => [`--${name}`, ...(f.short ? [`-${f.short}`] : [])];
/** Single-quoted for sh, zsh and fish alike (none of the table's text holds a quote that matters). */
const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
const fq = (s: string) => `'${s.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;

/** What a value-taking flag offers: its choices, or files or directories. */
function flagValues(f: Flag): string {
  if (f.choices) return f.choices.join(' ');
  return f.complete === 'dir' ? ':dir' : f.complete === 'file' ? ':file' : ':none';
}

/** The shell functions bash and zsh share: what each place offers. */
function caseTables(all: Place[]): string {
  const subs = all.filter((p) => p.subs.length > 0).map((p) => `    ${q(p.path)}) echo ${q(p.subs.map((s) => s.name).join(' '))} ;;`);
  const flags = all.map((p) => `    ${q(p.path)}) echo ${q(Object.entries(p.flags).flatMap(([n, f]) => names(n, f)).join(' '))} ;;`);
  const values = all.flatMap((p) =>
    Object.entries(p.flags)
      .filter(([, f]) => f.type === 'string')
      .map(([n, f]) => `    ${names(n, f).map((x) => q(`${p.path}|${x}`)).join('|')}) echo ${q(flagValues(f))} ;;`),
  );
  const operands = all.filter((p) => p.operands !== 'none').map((p) => `    ${q(p.path)}) echo ${p.operands} ;;`);
  return [
    '_osfarm_subs() {',
    '  case "$1" in',
    ...subs,
    '  esac',
    '}',
    '_osfarm_flags() {',
    '  case "$1" in',
    ...flags,
    '  esac',
    '}',
    '# The values a flag takes at a place: words, :file, :dir or :none; nothing for a flag without a value.',
    '_osfarm_value() {',
    '  case "$1|$2" in',
    ...values,
    '  esac',
    '}',
    '_osfarm_operands() {',
    '  case "$1" in',
    ...operands,
    '  esac',
    '}',
    '# The place (command path) of the words before the cursor, skipping flags and their values.',
    '_osfarm_place() {',
    '  local place= skip= w',
    '  for w in "$@"; do',
    '    if [ -n "$skip" ]; then skip=; continue; fi',
    '    case "$w" in',
    '      -*=*) continue ;;',
    '      -*) [ -n "$(_osfarm_value "$place" "$w")" ] && skip=1; continue ;;',
    '    esac',
    '    case " $(_osfarm_subs "$place") " in',
    // biome-ignore lint/suspicious/noTemplateCurlyInString: bash, not a template
    '      *" $w "*) place=${place:+$place }$w ;;',
    '    esac',
    '  done',
    '  echo "$place"',
    '}',
  ].join('\n');
}

function bash(all: Place[]): string {
  return `# bash completion for osfarm: source <(osfarm completion bash), or save it as
# /usr/share/bash-completion/completions/osfarm
${caseTables(all)}
_osfarm() {
  local cur=\${COMP_WORDS[COMP_CWORD]} prev=\${COMP_WORDS[COMP_CWORD-1]}
  local place value
  place=$(_osfarm_place "\${COMP_WORDS[@]:1:COMP_CWORD-1}")
  COMPREPLY=()
  if [[ $COMP_CWORD -gt 1 && $prev == -* ]]; then
    value=$(_osfarm_value "$place" "$prev")
    case $value in
      '') ;;
      :file) COMPREPLY=($(compgen -f -- "$cur")); return ;;
      :dir) COMPREPLY=($(compgen -d -- "$cur")); return ;;
      :none) return ;;
      *) COMPREPLY=($(compgen -W "$value" -- "$cur")); return ;;
    esac
  fi
  if [[ $cur == -* ]]; then
    COMPREPLY=($(compgen -W "$(_osfarm_flags "$place")" -- "$cur"))
    return
  fi
  local subs
  subs=$(_osfarm_subs "$place")
  if [[ -n $subs ]]; then
    COMPREPLY=($(compgen -W "$subs" -- "$cur"))
    return
  fi
  case $(_osfarm_operands "$place") in
    file) COMPREPLY=($(compgen -f -- "$cur")) ;;
    dir) COMPREPLY=($(compgen -d -- "$cur")) ;;
  esac
}
complete -o filenames -F _osfarm osfarm
`;
}

function zsh(all: Place[]): string {
  // zsh shows descriptions: the sub-commands' summaries and the flags' descriptions.
  const entry = (kind: string, path: string, items: [string, string][]) =>
    `    ${q(`${kind}|${path}`)})\n      items=(\n${items.map(([w, d]) => `        ${q(`${w.replace(/:/g, '\\:')}:${d}`)}`).join('\n')}\n      ) ;;`;
  const subs = all.filter((p) => p.subs.length > 0).map((p) => entry('subs', p.path, p.subs.map((s) => [s.name, s.summary])));
  const flags = all.map((p) => entry('flags', p.path, Object.entries(p.flags).flatMap(([n, f]) => names(n, f).map((x): [string, string] => [x, f.description]))));
  return `#compdef osfarm
# zsh completion for osfarm: source <(osfarm completion zsh) after compinit, or save it
# as _osfarm in a directory of $fpath
${caseTables(all)}
_osfarm_described() {
  local -a items
  case "$1|$2" in
${[...subs, ...flags].join('\n')}
  esac
  _describe -t "$1" "osfarm $1" items
}
_osfarm() {
  local place value prev=\${words[CURRENT-1]}
  place=$(_osfarm_place "\${(@)words[2,CURRENT-1]}")
  if (( CURRENT > 2 )) && [[ $prev == -* ]]; then
    value=$(_osfarm_value "$place" "$prev")
    case $value in
      '') ;;
      :file) _files; return ;;
      :dir) _files -/; return ;;
      :none) return ;;
      *) compadd -- \${=value}; return ;;
    esac
  fi
  if [[ $PREFIX == -* ]]; then
    _osfarm_described flags "$place"
    return
  fi
  if [[ -n $(_osfarm_subs "$place") ]]; then
    _osfarm_described subs "$place"
    return
  fi
  case $(_osfarm_operands "$place") in
    file) _files ;;
    dir) _files -/ ;;
  esac
}
if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
  _osfarm "$@"
else
  compdef _osfarm osfarm
fi
`;
}

function fish(all: Place[]): string {
  const lines = ['# fish completion for osfarm: osfarm completion fish | source, or save it as', '# ~/.config/fish/completions/osfarm.fish', 'complete -c osfarm -f'];
  // The condition that the words so far lead to a place: each word of its path seen, and no sub-command of it yet.
  const at = (p: Place) => {
    if (p.path === '') return '__fish_use_subcommand';
    const words = p.path.split(' ');
    const seen = words.map((w) => `__fish_seen_subcommand_from ${w}`);
    if (p.subs.length > 0) seen.push(`not __fish_seen_subcommand_from ${p.subs.map((s) => s.name).join(' ')}`);
    return seen.join('; and ');
  };
  for (const p of all) {
    const cond = fq(at(p));
    for (const s of p.subs) lines.push(`complete -c osfarm -n ${cond} -a ${fq(s.name)} -d ${fq(s.summary)}`);
    if (p.path === '') continue;
    for (const [n, f] of Object.entries(p.flags)) {
      if (p.flags === GLOBAL_FLAGS || (GLOBAL_FLAGS[n] === f)) continue;
      const value = f.type === 'string' ? (f.choices ? ` -x -a ${fq(f.choices.join(' '))}` : f.complete === 'dir' ? ` -x -a '(__fish_complete_directories)'` : f.complete === 'file' ? ' -r -F' : ' -x') : '';
      lines.push(`complete -c osfarm -n ${cond} -l ${n}${f.short ? ` -s ${f.short}` : ''}${value} -d ${fq(f.description)}`);
    }
    if (p.operands !== 'none' && p.subs.length === 0) lines.push(`complete -c osfarm -n ${cond} ${p.operands === 'dir' ? `-a '(__fish_complete_directories)'` : '-F'}`);
  }
  for (const [n, f] of Object.entries(GLOBAL_FLAGS)) {
    const value = f.type === 'string' ? (f.complete === 'dir' ? ` -x -a '(__fish_complete_directories)'` : ' -x') : '';
    lines.push(`complete -c osfarm -l ${n}${f.short ? ` -s ${f.short}` : ''}${value} -d ${fq(f.description)}`);
  }
  return `${lines.join('\n')}\n`;
}

/** The completion script for a shell. */
export function completionScript(shell: Shell, commands: Command[]): string {
  const all = places(commands);
  return shell === 'bash' ? bash(all) : shell === 'zsh' ? zsh(all) : fish(all);
}
