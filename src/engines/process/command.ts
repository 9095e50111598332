import { accessSync, constants, statSync } from "node:fs";
import { delimiter, isAbsolute, join, resolve } from "node:path";

/**
 * The file a replica's command runs, found as execvp(3) finds it: a name with a slash is a path (relative to the
 * replica's cwd), any other is looked up in PATH (the replica's own: a variant's `env` may set it; unset, the
 * system's default path), where an empty entry means the cwd. Undefined when there is no such executable file. Checked before anything starts, so that
 * `validate` and `up` name a mistyped command at once instead of waiting out the health timeout on a replica that
 * can never run.
 */
export function resolveCommand(command: string, cwd: string, path: string | undefined): string | undefined {
  if (command === "") return undefined;
  if (command.includes("/")) {
    const file = isAbsolute(command) ? command : resolve(cwd, command);
    return executable(file) ? file : undefined;
  }
  // With no PATH at all, execvp searches the system's default path (confstr _CS_PATH), as spawn does.
  for (const dir of (path ?? "/bin:/usr/bin").split(delimiter)) {
    const file = join(dir === "" ? cwd : resolve(cwd, dir), command);
    if (executable(file)) return file;
  }
  return undefined;
}

function executable(file: string): boolean {
  try {
    if (!statSync(file).isFile()) return false;
    accessSync(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}
