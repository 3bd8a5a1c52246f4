# What zsh's completion offers for a command line: `zsh -f zsh_capture.zsh SCRIPT LINE`.
# zsh completes only inside its line editor, so this runs one in a pseudo-terminal (zpty), types
# LINE and TAB, and prints each match completion adds (as zsh-capture-completion does).
zmodload zsh/zpty || exit 1
zpty z env CW_SCRIPT=$1 zsh -f -i
zpty -w z "source ${0:A:h}/zsh_capture_setup.zsh"
zpty -w z "$2"$'\t'
integer deadline=$(( SECONDS + 30 ))
while (( SECONDS < deadline )); do
  if zpty -rt z line; then
    [[ $line == *END-OF-COMPLETION* ]] && break
    [[ $line == *MATCH:* ]] && print -r -- ${${line#*MATCH:}%%$'\r'*}
  else
    sleep 0.05
  fi
done
zpty -d z
