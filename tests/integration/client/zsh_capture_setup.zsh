# Sourced by zsh_capture.zsh in the interactive zsh it drives: load the completion script, print
# each match as `MATCH:<word>`, and end the shell once completion has run.
PROMPT=
autoload -U compinit; compinit -u -D
eval "$(<$CW_SCRIPT)"
zstyle ':completion:*' list-grouped false
zstyle ':completion:*' insert-tab false
compprefuncs=( ) comppostfuncs=( finish )
finish () { print 'END-OF''-COMPLETION'; zle -I; exit }
compadd () {
  if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then builtin compadd "$@"; return $?; fi
  typeset -a __hits __dscr
  builtin compadd -A __hits -D __dscr "$@"
  local r=$?
  for h in $__hits; do print -r -- "MATCH""":$h; done
  return $r
}
bindkey '^I' complete-word
