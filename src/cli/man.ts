/** The osfarm(1) manual page in roff (man(7) macros), made from the command table like --help. */
import { VERSION } from '../base/version.js';
import type { Command, Flags } from './command.js';
import { flagSynopsis, flagText, usageLines } from './help.js';
import { GLOBAL_FLAGS, SECTIONS } from './table.js';

/** Text safe for roff: backslashes and leading dots or quotes neutralised, dashes as minus signs, other than ASCII as \[uXXXX]. */
function esc(text: string): string {
  return text
    .replace(/\\/g, '\\e')
    .replace(/-/g, '\\-')
    .replace(/^([.'])/gm, '\\&$1')
    .replace(/[^\p{ASCII}]/gu, (c) => `\\[u${c.codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')}]`);
}

function flags(list: Flags): string[] {
  return Object.entries(list).flatMap(([n, f]) => ['.TP', `.B ${esc(flagSynopsis(n, f).trim())}`, esc(flagText(f))]);
}

function command(cmd: Command, path: string[]): string[] {
  const out = [`.SS ${esc(path.join(' '))}`, esc(cmd.summary), '.PP', ...usageLines(cmd, path).flatMap((u) => ['.nf', `.B ${esc(u)}`, '.fi'])];
  if (cmd.description) out.push('.PP', ...cmd.description.split(/\n\n+/).flatMap((p, i) => [...(i > 0 ? ['.PP'] : []), esc(p.replace(/\n/g, ' '))]));
  if (cmd.options && Object.keys(cmd.options).length > 0) out.push('.PP', 'Flags:', '.RS', ...flags(cmd.options), '.RE');
  if (cmd.examples?.length) {
    out.push('.PP', 'Examples:', '.RS');
    for (const e of cmd.examples) out.push('.TP', `.B ${esc(e.command)}`, esc(e.what));
    out.push('.RE');
  }
  for (const s of cmd.subcommands ?? []) out.push(...command(s, [...path, s.name]));
  return out;
}

/** The whole page. Its date is the version's, so the page is the same for the same table. */
export function manPage(commands: Command[]): string {
  const lines = [
    `.TH OSFARM 1 "" "osfarm ${VERSION}" "User Commands"`,
    '.SH NAME',
    'osfarm \\- build, cache and move Linux images by their blocks',
    '.SH SYNOPSIS',
    '.B osfarm',
    '.I command',
    '[\\fIflags\\fR] [\\fIoperands\\fR]',
    '.SH DESCRIPTION',
    esc('osfarm builds Linux filesystem and VM images in a chroot (mmdebstrap, debootstrap, dnf), caches their layered stages, keeps them in a repository, and moves them between machines by sending only the blocks the receiver lacks (push over TCP, pull over HTTP). Every command that prints results takes --json; docs/cli.md describes the event stream.'),
    '.SH GLOBAL FLAGS',
    ...flags(GLOBAL_FLAGS),
  ];
  for (const [section, heading] of Object.entries(SECTIONS)) {
    const inSection = commands.filter((c) => (c.section ?? 'shell') === section);
    if (inSection.length === 0) continue;
    lines.push(`.SH ${esc(heading.toUpperCase())}`);
    for (const c of inSection) lines.push(...command(c, [c.name]));
  }
  lines.push(
    '.SH EXIT STATUS',
    '0 on success, 2 for a usage mistake (an unknown command or flag, a bad value: error code OSFARM_INVALID_ARGUMENT), 1 for any other failure.',
    '.SH ENVIRONMENT',
    esc('OSFARM_REPO (the repository), OSFARM_WORK (build work directory and caches), OSFARM_STAGES and OSFARM_STAGES_MAX (the stage store and its bound), OSFARM_MIRROR (package mirrors for builds), OSFARM_RPM_GPGKEYS (signing keys of RPM repositories), OSFARM_TOKEN (the push token), OSFARM_DEBUG (stack traces of internal errors), SOURCE_DATE_EPOCH (reproducible builds).'),
    '.SH SEE ALSO',
    esc('The documents under docs/ in the package: cli.md (output, events, errors), build.md (specs), stages.md (layered builds), protocol.md and http.md (transfers), web.md (the GUI and REST API).'),
  );
  return `${lines.join('\n')}\n`;
}
