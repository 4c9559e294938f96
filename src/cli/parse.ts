/**
 * Command-line parsing over the command table: `--flag`, `--flag=value`, `--flag value`,
 * `-f value`, `-qv` (booleans run together), `--` (everything after is an operand). Every
 * mistake gets a message that names the command and, for a misspelt flag, the closest ones.
 */
import { invalidArgument } from '../base/errors.js';
import { didYouMean } from '../base/suggest.js';
import type { Flag, Flags, ParsedArgs } from './command.js';

/** Parses `argv` (the words after the command path) against `flags`; `where` is the command path for messages. */
export function parseFlags(argv: string[], flags: Flags, where: string, takesOperands: boolean): ParsedArgs {
  const values: ParsedArgs['values'] = {};
  const positionals: string[] = [];
  const byShort = new Map<string, string>();
  for (const [name, f] of Object.entries(flags)) if (f.short) byShort.set(f.short, name);
  const cmd = where ? `osfarm ${where}` : 'osfarm';
  const help = `${cmd} --help lists them`;

  const set = (name: string, f: Flag, value: string | true, shown: string) => {
    if (f.type === 'boolean' && value !== true) throw invalidArgument(`${shown} takes no value (got ${JSON.stringify(value)}) in ${cmd}`);
    if (f.choices && typeof value === 'string' && !f.choices.includes(value)) {
      throw invalidArgument(`${shown} ${JSON.stringify(value)} is not one of ${f.choices.join(', ')}${didYouMean(value, f.choices, 1)}`);
    }
    if (f.multiple) {
      const prev = values[name];
      values[name] = [...(Array.isArray(prev) ? prev : []), value as string];
    } else {
      if (values[name] !== undefined && f.type === 'string') throw invalidArgument(`${shown} is given twice in ${cmd}: give it once`);
      values[name] = value;
    }
  };
  const unknown = (shown: string, typed: string) => {
    const names = Object.keys(flags).map((n) => `--${n}`);
    return invalidArgument(`unknown flag ${shown} for ${cmd}${didYouMean(typed, names, 2)}; ${help}`);
  };

  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (arg.startsWith('--')) {
      const eq = arg.indexOf('=');
      const name = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
      const f = flags[name];
      if (!f) throw unknown(`--${name}`, `--${name}`);
      if (eq >= 0) set(name, f, arg.slice(eq + 1), `--${name}`);
      else if (f.type === 'boolean') set(name, f, true, `--${name}`);
      else set(name, f, valueAfter(argv, i++, `--${name}`, f, cmd), `--${name}`);
      continue;
    }
    if (arg.startsWith('-') && arg.length > 1) {
      // -qv: booleans together; -o FILE or -oFILE: a value, the rest of the word or the next word.
      for (let j = 1; j < arg.length; j++) {
        const s = arg[j]!;
        const name = byShort.get(s);
        if (!name) throw unknown(`-${s}${arg.length > 2 ? ` (in ${arg})` : ''}`, `-${s}`);
        const f = flags[name]!;
        if (f.type === 'boolean') {
          set(name, f, true, `-${s}`);
          continue;
        }
        const rest = arg.slice(j + 1);
        set(name, f, rest !== '' ? rest : valueAfter(argv, i++, `-${s}`, f, cmd), `-${s}`);
        break;
      }
      continue;
    }
    positionals.push(arg);
  }
  if (positionals.length > 0 && !takesOperands) {
    throw invalidArgument(`${cmd} takes no operands (got ${positionals.map((p) => JSON.stringify(p)).join(' ')}); ${help}`);
  }
  return { values, positionals };
}

function valueAfter(argv: string[], i: number, shown: string, f: Flag, cmd: string): string {
  const v = argv[i + 1];
  const what = f.value ?? 'VALUE';
  if (v === undefined) throw invalidArgument(`${shown} needs a value (${shown} ${what}) in ${cmd}`);
  // `--name --json` is a forgotten value, not a name starting with two dashes.
  if (v.startsWith('--')) throw invalidArgument(`${shown} needs a value before ${v} (write ${shown}=${v} if that is the value)`);
  return v;
}
